"""Run the trainer on the tiny Llama as a separate process (alone or under torchrun), for tests that
kill a run (`kill -9`) and resume it. `--stream DIR` trains on DIR's JSON-lines shards of token rows
read as a stream (`token_stream`, an 8-row shuffle buffer) instead of the map-style progressions.

    python -m tests.unit.train.run_trainer --args '{"output_dir": "out", "max_steps": 12}' \
        --records out/log.jsonl [--weights w.pt] [--hang-after-save 8] [--samples 40] [--hidden 64]
        [--model llama|forgather] [--stream DIR] [--mixed-optimizers]

`--mixed-optimizers` trains with every optimizer of forgather.ml.optim at once (a Multiopt giving
each some of the parameters).

`--hang-after-save K` makes the run sleep right after checkpoint K is written (a marker file
`<output_dir>/hanging` appears), so a test can kill it at a known point.

Every run checks its own teardown: when the interpreter starts tearing down, no object may still
hold a process group (one collected that late can abort the process after a good run), else the
run exits with status 3 naming the holders.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import gc
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch

from forgather.ml.data.streaming import token_stream
from forgather.ml.train.args import TrainingArguments
from forgather.ml.train.trainer import Trainer
from tests.unit.train._tiny import ProgressionDataset, Recorder, tiny_forgather, tiny_llama


class HangAfterSave:
    def __init__(self, step: int, marker: Path):
        self.step, self.marker = step, marker

    def on_save(self, args, state, control, checkpoint_dir=None, **kwargs):
        if state.global_step == self.step:
            if state.is_world_process_zero:
                self.marker.write_text(str(checkpoint_dir))
            time.sleep(3600)


def check_teardown() -> None:
    """Registered before the process group exists, so it runs after forgather's own exit hook.
    A held group is reported with what keeps its holder alive (the chain of referrers)."""
    import torch.distributed as dist

    with warnings.catch_warnings():  # isinstance on torch's deprecated aliases warns
        warnings.simplefilter("ignore")
        owners = [
            owner
            for owner in gc.get_objects()
            if any(isinstance(r, dist.ProcessGroup) for r in gc.get_referents(owner))
        ]
    if owners:
        holders = collections.Counter(type(owner).__name__ for owner in owners)
        sys.stderr.write(f"process groups still held at interpreter teardown by {dict(holders)}\n")
        sys.stderr.write(f"kept alive by: {referrer_chain(owners[0])}\n")
        sys.stderr.flush()
        os._exit(3)


def referrer_chain(start: object, depth: int = 6) -> str:
    """The types on one path of referrers from `start` outwards (a diagnosis aid)."""
    chain, current, seen = [], start, {id(start)}
    for _ in range(depth):
        referrers = [
            r for r in gc.get_referrers(current)
            if id(r) not in seen and r is not chain and not isinstance(r, type(sys._getframe()))
        ]  # fmt: skip
        if not referrers:
            break
        current = referrers[0]
        seen.add(id(current))
        described = type(current).__name__
        if isinstance(current, dict):
            described += f"(keys {sorted(map(str, current))[:4]})"
        chain.append(described)
    return " <- ".join([type(start).__name__, *chain])


def mixed_optimizers(args: TrainingArguments):
    """A Multiopt with every optimizer of forgather.ml.optim, each on some of the tiny Llama's
    parameters (one run covers them all: sharded, checkpointed, resumed)."""
    import functools

    from forgather.ml.optim import Adafactor, Apollo, Muon, SinkGD, apollo_mini, multiopt

    lr = args.learning_rate
    groups = [
        ("q_proj", functools.partial(Muon, lr=lr, weight_decay=0.01)),
        ("k_proj", functools.partial(Apollo, lr=lr, rank=8, projector="random")),
        ("v_proj", functools.partial(Apollo, lr=lr, rank=8, projector="online_pca")),
        ("o_proj", functools.partial(apollo_mini, lr=lr)),
        ("gate_proj", functools.partial(SinkGD, lr=lr)),
        ("up_proj|down_proj", functools.partial(Adafactor, lr=lr, relative_step=False)),
        (".", functools.partial(torch.optim.AdamW, lr=lr)),
    ]
    return functools.partial(multiopt, groups=[{"pattern": p, "optimizer": f} for p, f in groups])


def main() -> None:
    atexit.register(check_teardown)
    parser = argparse.ArgumentParser()
    parser.add_argument("--args", required=True, help="TrainingArguments as JSON")
    parser.add_argument("--records", required=True)
    parser.add_argument("--weights")
    parser.add_argument("--hang-after-save", type=int)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--model", choices=("llama", "forgather"), default="llama")
    parser.add_argument("--stream")
    parser.add_argument("--mixed-optimizers", action="store_true", help="every optimizer at once")
    options = parser.parse_args()

    torch.set_num_threads(1)
    args = TrainingArguments.from_dict(json.loads(options.args))
    callbacks = [Recorder(options.records)]
    if options.hang_after_save is not None:
        callbacks.append(HangAfterSave(options.hang_after_save, Path(args.output_dir) / "hanging"))
    trainer = Trainer(
        args=args,
        model_init=lambda: (tiny_forgather if options.model == "forgather" else tiny_llama)(
            options.hidden
        ),
        train_dataset=token_stream(options.stream, shuffle_buffer=8, seed=3)
        if options.stream
        else ProgressionDataset(options.samples, seed=1),
        eval_dataset=ProgressionDataset(16, seed=2),
        callbacks=callbacks,
        optimizer_factory=mixed_optimizers(args) if options.mixed_optimizers else None,
    )
    trainer.train()
    if options.weights:
        # The whole model's weights (gathered from the shards under FSDP), written by rank 0.
        weights = trainer.strategy.full_state_dict(trainer.model)
        if trainer.env.is_main_process:
            torch.save(weights, options.weights)
    trainer.close()


if __name__ == "__main__":
    main()
