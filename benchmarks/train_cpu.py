"""What the trainer costs: forgather's Trainer versus a hand-written PyTorch loop, on this CPU.

Both train the same Hugging Face `LlamaForCausalLM` (same initial weights: one seeded model,
deep-copied), on the same batches in the same order (real tokens of the embedded Austen corpus, BPE
tokenizer trained on a slice of it, packed into fixed blocks), with AdamW at a constant LR and the
same gradient clipping. Three runners:

* `plain`    the hand-written loop (forward, shifted cross-entropy, backward, clip, step, zero_grad);
* `trainer`  `Trainer` without callbacks, eval or checkpoints, logging every `--log-steps` (10) steps;
* `+logging` `Trainer` with ProgressCallback (plain lines, written to os.devnull) and JsonLinesLogger,
             logging every step (the most logging can cost).

Each runner runs in its own thread, but only one at a time: after the warm-up, the script alternates
measured segments of `--steps` optimizer steps (`--rounds` rounds, the order rotated each round) so
that drifting machine load hits every runner alike; the headline ratio is the median over rounds of
plain-segment time / trainer-segment time (the aggregate ratio is printed too). A step takes seconds
here, so the default is many short segments: 9 rounds x 1 step (about 2 minutes in all).

A trainer's segment is timed from `on_step_end` to `on_step_end` (a timing callback registered last),
so it holds every part of the training loop (data loading, callbacks, logging) but none of the
start-up: building the trainer, `train()`'s set-up (dataloader, optimizer, ...) and the warm-up steps
are reported separately (the "start-up" column), as is nothing of the teardown.

The runs are checked to be the same computation: the per-step losses of `+logging` and the logged
interval means of `trainer` are compared with the plain loop's (max abs diff; 0 with the default
`--plain-loss same`, where the plain loop writes out the trainer's loss formula; `--plain-loss hf` uses
transformers' own loss instead, equal up to float rounding).

`--aa` adds `plain-B`, a second copy of the plain loop: its ratio to `plain` is the noise floor of
the measurement on this machine (machine load from other processes moves single segments by 10-30%).
Before the runners start, one untimed forward/backward on a throwaway copy pays the process's first-use
costs, which otherwise made the first runner to warm up measurably slower than a copy of itself.

A step of this model takes seconds on 2 cores, so a fixed per-step cost of a few milliseconds is far
below the noise of a shared machine. The same three runners therefore also run a tiny model (hidden 16,
one layer, 8-token blocks; `--probe-steps`, 0 skips it), where the per-step difference to the plain
loop *is* the framework's cost; it is printed in ms and as a share of the big model's step.

    python benchmarks/train_cpu.py [--steps 1] [--rounds 9] [--warmup 1] [--batch-size 16] [--seq-len 256]
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

GOAL = 0.95
BUDGET_S = 240.0


# ---- data ---------------------------------------------------------------------------------------


def corpus_blocks(
    blocks_needed: int, seq_len: int, vocab_size: int, tokenizer_docs: int
) -> tuple[torch.Tensor, str]:
    """Fixed `seq_len`-token blocks of the embedded corpus (documents joined with EOS, cut in order)."""
    from forgather.ml.data.corpus import load_embedded_corpus
    from forgather.ml.data.tokenizer import train_tokenizer

    start = time.perf_counter()
    train = load_embedded_corpus("train")
    tokenizer = train_tokenizer(
        train[:tokenizer_docs]["text"], vocab_size=vocab_size, model_max_length=10**9
    )
    trained = time.perf_counter() - start
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    docs = 0
    for start_doc in range(0, len(train), 16):
        for doc in tokenizer(train[start_doc : start_doc + 16]["text"])["input_ids"]:
            ids += doc + [eos]
            docs += 1
        if len(ids) >= blocks_needed * seq_len:
            break
    count = len(ids) // seq_len
    blocks = torch.tensor(ids[: count * seq_len], dtype=torch.long).view(count, seq_len)
    note = (
        f"embedded corpus, BPE {len(tokenizer)} tokens trained on {tokenizer_docs} chapters "
        f"(load+train {trained:.1f}s); {docs} chapters -> {count} blocks of {seq_len} "
        f"({count * seq_len:,} tokens)"
    )
    return blocks, note


class BlockDataset(torch.utils.data.Dataset):
    """Map-style dataset of `{"input_ids": block}` rows, as the trainer wants."""

    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[index]}


def batch_order(num_blocks: int, batch_size: int, seed: int, steps: int) -> list[torch.Tensor]:
    """Index batches in the trainer's order: a permutation per epoch seeded `seed + epoch`, cut into
    full batches (drop_last). Written independently; the loss check verifies it matches."""
    batches: list[torch.Tensor] = []
    epoch = 0
    while len(batches) < steps:
        order = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed + epoch))
        for i in range(num_blocks // batch_size):
            batches.append(order[i * batch_size : (i + 1) * batch_size])
        epoch += 1
    return batches[:steps]


# ---- taking turns -------------------------------------------------------------------------------


class Aborted(Exception):
    pass


class Runner:
    """A training loop in its own thread that stops at segment boundaries until given the next turn.

    The worker calls `boundary()` at the end of the warm-up and of each measured segment; it records
    the segment's time and waits. The main thread calls `turn()` to let it run to the next boundary.
    """

    def __init__(self, name: str, body: Callable[[Runner], None]):
        self.name = name
        self.body = body
        self.go = threading.Event()
        self.done = threading.Event()
        self.abort = False
        self.error: BaseException | None = None
        self.segment_start: float | None = None
        self.segments: list[float] = []  # seconds of each measured segment
        self.timings: dict[str, float] = {}  # start-up parts
        self.losses: list[float] = []  # per-step (plain) or logged (trainer) losses
        self.logged: list[tuple[int, float]] = []  # (step, loss) log records of a trainer
        self.threads = 0
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)

    def _main(self) -> None:
        try:
            self._wait()
            self.threads = torch.get_num_threads()
            self.body(self)
        except Aborted:
            pass
        except BaseException as error:  # noqa: BLE001 (handed to the main thread)
            self.error = error
        finally:
            self.done.set()

    def _wait(self) -> None:
        self.go.wait()
        self.go.clear()
        if self.abort:
            raise Aborted

    def boundary(self, warmup_done: bool = False) -> None:
        """End of a segment: record its time (unless it was the warm-up), wait for the next turn."""
        now = time.perf_counter()
        if warmup_done:
            self.timings["warm-up"] = now - self.timings.pop("_warmup_start", now)
        elif self.segment_start is not None:
            self.segments.append(now - self.segment_start)
        self.done.set()
        self._wait()
        self.segment_start = time.perf_counter()

    def turn(self) -> None:
        """Let the worker run to its next boundary (or to its end)."""
        self.done.clear()
        self.go.set()
        self.done.wait()
        if self.error is not None:
            raise RuntimeError(f"{self.name} failed: {self.error!r}") from self.error

    def stop(self) -> None:
        self.abort = True
        self.go.set()


# ---- the plain loop -----------------------------------------------------------------------------


def plain_body(model, blocks, opts) -> Callable[[Runner], None]:
    def body(runner: Runner) -> None:
        start = time.perf_counter()
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=opts.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0
        )
        batches = batch_order(len(blocks), opts.batch_size, opts.seed, opts.total_steps)
        runner.timings["set-up"] = time.perf_counter() - start
        runner.timings["_warmup_start"] = time.perf_counter()
        model.train()
        losses = []
        for step, index in enumerate(batches, start=1):
            input_ids = blocks[index]
            # "hf": transformers' own loss (it shifts the labels, not the logits)
            if opts.plain_loss == "hf":
                loss = model(input_ids=input_ids, labels=input_ids).loss
            else:  # the trainer's formula (forgather.ml.train.loss.causal_lm_loss), written out
                logits = model(input_ids=input_ids).logits
                loss = F.cross_entropy(
                    logits[:, :-1, :].float().reshape(-1, logits.size(-1)),
                    input_ids[:, 1:].reshape(-1),
                )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), opts.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            if step in opts.boundaries:
                runner.boundary(warmup_done=step == opts.warmup)
        runner.losses = [float(x) for x in losses]
        runner.logged = list(enumerate(runner.losses, start=1))

    return body


# ---- the trainer --------------------------------------------------------------------------------


class SegmentTimer:
    """Registered last: marks train() set-up done (on_train_begin) and the segment boundaries."""

    def __init__(self, runner: Runner, opts):
        self.runner = runner
        self.opts = opts
        self.setup_start = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.runner.timings["train() set-up"] = now - self.setup_start
        self.runner.timings["_warmup_start"] = now

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.opts.boundaries:
            self.runner.boundary(warmup_done=state.global_step == self.opts.warmup)


def trainer_body(model, blocks, opts, output_dir: str, with_logging: bool):
    def body(runner: Runner) -> None:
        from forgather.ml.train.args import TrainingArguments
        from forgather.ml.train.callbacks import JsonLinesLogger, ProgressCallback
        from forgather.ml.train.trainer import Trainer

        start = time.perf_counter()
        args = TrainingArguments(
            output_dir=output_dir,
            per_device_train_batch_size=opts.batch_size,
            max_steps=opts.total_steps,
            learning_rate=opts.lr,
            lr_scheduler_type="constant",
            weight_decay=0.0,
            max_grad_norm=opts.max_grad_norm,
            eval_strategy="no",
            save_strategy="no",
            logging_steps=1 if with_logging else opts.log_steps,
            logging_first_step=True,
            seed=opts.seed,
            dataloader_drop_last=True,
            device="cpu",
        )
        timer = SegmentTimer(runner, opts)
        callbacks: list = []
        devnull = None
        if with_logging:
            devnull = open(os.devnull, "w")  # noqa: SIM115 (closed below)
            callbacks = [ProgressCallback(output=devnull, use_rich=False), JsonLinesLogger()]
        trainer = Trainer(
            args=args,
            model=model,
            train_dataset=BlockDataset(blocks),
            callbacks=[*callbacks, timer],
        )
        runner.timings["Trainer()"] = time.perf_counter() - start
        timer.setup_start = time.perf_counter()
        try:
            trainer.train()
        finally:
            if devnull is not None:
                devnull.close()
        runner.logged = [
            (record["step"], float(record["loss"]))
            for record in trainer.state.log_history
            if "loss" in record
        ]

    return body


# ---- measuring and reporting --------------------------------------------------------------------


def schedule(
    opts: argparse.Namespace, steps: int, warmup: int, seq_len: int, rounds: int
) -> argparse.Namespace:
    """`opts` with this measurement's segment length, warm-up, block length, rounds, boundaries."""
    run = argparse.Namespace(**vars(opts))
    run.steps, run.warmup, run.seq_len, run.rounds = steps, warmup, seq_len, rounds
    run.total_steps = warmup + rounds * steps
    run.boundaries = {warmup + i * steps for i in range(rounds + 1)}
    return run


def make_runners(
    model, blocks, run, output_root: str, with_logging_row: bool, aa: bool
) -> list[Runner]:
    runners = [
        Runner("plain", plain_body(copy.deepcopy(model), blocks, run)),
        *([Runner("plain-B", plain_body(copy.deepcopy(model), blocks, run))] if aa else []),
        Runner(
            "trainer", trainer_body(copy.deepcopy(model), blocks, run, f"{output_root}/t", False)
        ),
    ]
    if with_logging_row:
        runners.append(
            Runner(
                "+logging",
                trainer_body(copy.deepcopy(model), blocks, run, f"{output_root}/l", True),
            )
        )
    return runners


def interleave(runners: list[Runner], run, wall_start: float, verbose: bool) -> None:
    """Warm-up turns, then `rounds` rounds of one measured segment per runner, then the endings."""
    tokens = run.batch_size * run.seq_len * run.steps
    try:
        for runner in runners:
            runner.thread.start()
        for runner in runners:  # start-up and warm-up, untimed
            runner.turn()
        if verbose:
            step_s = statistics.fmean(r.timings["warm-up"] / run.warmup for r in runners)
            estimate = (
                time.perf_counter() - wall_start + step_s * len(runners) * run.rounds * run.steps
            )
            note = (
                f" (over the {BUDGET_S:.0f}s budget: lower --steps/--rounds)"
                if estimate > BUDGET_S
                else ""
            )
            print(
                f"warm-up done at {time.perf_counter() - wall_start:.0f}s; estimated end {estimate:.0f}s{note}"
            )
        for round_index in range(run.rounds):
            shift = round_index % len(runners)
            for runner in runners[shift:] + runners[:shift]:
                runner.turn()
            if verbose:
                rates = ", ".join(f"{r.name} {tokens / r.segments[-1]:.0f}" for r in runners)
                print(f"round {round_index + 1} tok/s: {rates}", flush=True)
        for runner in runners:  # let each finish (the trainer's teardown is untimed)
            runner.turn()
            runner.thread.join()
    except BaseException:
        for runner in runners:
            runner.stop()
        raise


def loss_check(plain: list[float], logged: list[tuple[int, float]]) -> tuple[float, int]:
    """Max |logged loss - plain mean over the same steps| and how many records were compared."""
    diffs = []
    previous = 0
    for step, loss in logged:
        diffs.append(abs(loss - statistics.fmean(plain[previous:step])))
        previous = step
    return (max(diffs) if diffs else float("nan")), len(diffs)


def table(runners: list[Runner], run) -> None:
    tokens = run.batch_size * run.seq_len * run.steps
    plain = runners[0]
    print(
        f"{'runner':<9} {'tokens/s':>9} {'ms/step':>8} {'ours/plain':>10} {'paired med':>10} "
        f"{'+ms/step':>8}  {'per-round tok/s':<22} start-up (s, untimed)"
    )
    plain_step = sum(plain.segments) / (len(plain.segments) * run.steps)
    for runner in runners:
        step = sum(runner.segments) / (len(runner.segments) * run.steps)
        paired = [p / s for p, s in zip(plain.segments, runner.segments, strict=True)]
        rates = [tokens / s for s in runner.segments]
        rounds = (
            " ".join(f"{r:.0f}" for r in rates)
            if len(rates) <= 4
            else f"{min(rates):.0f}..{statistics.median(rates):.0f}..{max(rates):.0f}"
        )
        startup = ", ".join(
            f"{k} {v:.2f}" for k, v in runner.timings.items() if not k.startswith("_")
        )
        print(
            f"{runner.name:<9} {run.batch_size * run.seq_len / step:>9.0f} {step * 1e3:>8.1f} "
            f"{plain_step / step:>10.3f} {statistics.median(paired):>10.3f} "
            f"{(step - plain_step) * 1e3:>+8.1f}  {rounds:<22} {startup}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1, help="optimizer steps per measured segment")
    parser.add_argument("--rounds", type=int, default=9, help="measured segments of each runner")
    parser.add_argument(
        "--log-steps", type=int, default=10, help="logging_steps of the trainer row"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps of each runner first")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--tokenizer-docs", type=int, default=40, help="chapters to train BPE on")
    parser.add_argument(
        "--plain-loss",
        choices=("same", "hf"),
        default="same",
        help="plain loop's loss: the trainer's formula written out (bit-identical losses) or "
        "transformers' own (labels=input_ids)",
    )
    parser.add_argument(
        "--probe-steps",
        type=int,
        default=30,
        help="segment length of the fixed-cost probe (tiny model, 8-token blocks); 0 skips it",
    )
    parser.add_argument("--probe-rounds", type=int, default=10, help="rounds of the probe")
    parser.add_argument("--no-logging-row", action="store_true", help="skip the +logging runner")
    parser.add_argument(
        "--aa",
        action="store_true",
        help="add plain-B, a second copy of the plain loop: its ratio is the noise floor",
    )
    opts = parser.parse_args()
    if (
        min(opts.steps, opts.rounds, opts.warmup, opts.batch_size, opts.log_steps) < 1
        or opts.seq_len < 2
    ):
        parser.error("--steps, --rounds, --warmup, --batch-size must be >= 1, --seq-len >= 2")

    wall_start = time.perf_counter()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    import forgather.ml.train.callbacks  # noqa: F401 (imported here: not timed as Trainer() start-up)
    import forgather.ml.train.trainer  # noqa: F401

    hf_logging.set_verbosity_error()
    main_run = schedule(opts, opts.steps, opts.warmup, opts.seq_len, opts.rounds)
    config = LlamaConfig(
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=max(256, opts.seq_len),
    )
    blocks, data_note = corpus_blocks(
        main_run.total_steps * opts.batch_size, opts.seq_len, config.vocab_size, opts.tokenizer_docs
    )
    torch.manual_seed(opts.seed)
    base = LlamaForCausalLM(config)
    params = sum(p.numel() for p in base.parameters())
    tokens_per_step = opts.batch_size * opts.seq_len
    print(
        f"model: LlamaForCausalLM {params / 1e6:.2f}M params ({config._attn_implementation}), "
        f"batch {opts.batch_size}x{opts.seq_len} = {tokens_per_step} tokens/step, AdamW lr "
        f"{opts.lr} constant, clip {opts.max_grad_norm}, plain loss: {opts.plain_loss}"
    )
    print(f"data: {data_note}")
    print(
        f"torch {torch.__version__}: {torch.get_num_threads()} intra-op threads, "
        f"{torch.get_num_interop_threads()} inter-op, {os.cpu_count()} CPUs; per runner "
        f"{opts.warmup} warm-up step(s), then {opts.rounds} rounds x {opts.steps} steps"
    )
    output_root = tempfile.mkdtemp(prefix="forgather-bench-")
    try:
        # One untimed forward/backward on a throwaway copy first: the first runner to warm up was
        # otherwise measured ~8% slower than a second copy of itself (first-use costs of the process).
        burner = copy.deepcopy(base)
        burner(input_ids=blocks[: opts.batch_size]).logits.sum().backward()
        del burner
        runners = make_runners(
            base, blocks, main_run, output_root, not opts.no_logging_row, opts.aa
        )
        del base
        interleave(runners, main_run, wall_start, verbose=True)
        print()
        table(runners, main_run)
        print(f"torch threads in each runner: {', '.join(str(r.threads) for r in runners)}")
        plain = runners[0]
        print(f"plain losses (first 3): {', '.join(f'{x:.4f}' for x in plain.losses[:3])}")
        for runner in runners[1:]:
            diff, count = loss_check(plain.losses, runner.logged)
            what = "logged interval-mean" if runner.name == "trainer" else "per-step"
            print(
                f"loss check {runner.name}: {count} {what} losses vs plain, max |diff| {diff:.2e}"
            )
        ours = next(r for r in runners if r.name == "trainer")
        ratio = sum(plain.segments) / sum(ours.segments)
        paired = statistics.median(
            p / s for p, s in zip(plain.segments, ours.segments, strict=True)
        )
        verdict = "OK" if paired >= GOAL else "BELOW GOAL"

        if opts.probe_steps > 0:
            # The model's compute hides a fixed per-step cost in the noise: measure it on a tiny model.
            probe_run = schedule(opts, opts.probe_steps, 10, 8, opts.probe_rounds)
            flat = blocks.flatten()
            probe_blocks = flat[: len(flat) // 8 * 8].view(-1, 8)
            tiny = LlamaConfig(
                vocab_size=config.vocab_size, hidden_size=16, intermediate_size=32,
                num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1,
                max_position_embeddings=256,
            )  # fmt: skip
            torch.manual_seed(opts.seed)
            probe = make_runners(
                LlamaForCausalLM(tiny),
                probe_blocks,
                probe_run,
                output_root,
                not opts.no_logging_row,
                opts.aa,
            )
            interleave(probe, probe_run, wall_start, verbose=False)
            print(
                f"\nfixed-cost probe: tiny Llama (hidden 16, 1 layer), batch {opts.batch_size}x8, "
                f"{opts.probe_rounds} rounds x {opts.probe_steps} steps; +ms/step is the framework's cost"
            )
            table(probe, probe_run)
            plain_step = sum(plain.segments) / (len(plain.segments) * opts.steps)
            for runner in probe[1:]:
                extra = statistics.median(
                    (r - p) / opts.probe_steps
                    for r, p in zip(runner.segments, probe[0].segments, strict=True)
                )
                print(
                    f"  {runner.name}: median paired {extra * 1e3:+.2f} ms/step = "
                    f"{extra / plain_step * 100:+.3f}% of the main model's {plain_step:.2f} s step"
                )
    finally:
        shutil.rmtree(output_root, ignore_errors=True)
    print(
        f"\nours/plain (trainer row): median of {len(plain.segments)} paired rounds {paired:.3f}, "
        f"aggregate {ratio:.3f} (goal >= {GOAL}): {verdict}"
    )
    print(f"total wall time {time.perf_counter() - wall_start:.0f}s")


if __name__ == "__main__":
    main()
