"""Parallel strategies side by side: tokens/s and peak memory per rank, DDP vs FSDP2, same model.

Each (strategy, processes) row is one torchrun job of this script in `--worker` mode: every rank
builds the same Llama-shaped forgather model (seeded), trains it with forgather's `Trainer` on
synthetic token blocks (no checkpoints, no eval) and times the optimizer steps after `--warmup`.
Rank 0 writes one JSON line: tokens/s over all ranks, the loss, each rank's model state (its bytes
of parameters, gradients and optimizer state: what FSDP shards) and each rank's peak memory
over the measured steps (CUDA: `torch.cuda.max_memory_allocated`; CPU: the process's peak resident
set, VmHWM reset after the warm-up, which includes the Python runtime and torch's libraries, about
the same for every strategy). The table gives each row's
ratio to DDP at the same process count, and for DDP and DiLoCo the bytes each rank all-reduces per
optimizer step to stay in sync (DDP: its gradient buckets, counted by a communication hook; DiLoCo:
its pseudo-gradients every `--sync-every` steps). All rows see the same global batch per step.

    python benchmarks/parallel.py                                  # CPU, tiny shape, 2 and 4 procs
    python benchmarks/parallel.py --shape 40m --steps 8 --warmup 2 --batch-size 8 --seq-len 128
    python benchmarks/parallel.py --device cuda --shape 1b --nprocs 2 --seq-len 2048 --batch-size 4 --bf16

On one GPU (`--nprocs 1`) FSDP has nothing to shard: run it on a machine with 2+ GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SHAPES = {
    # name: hidden, layers, heads, kv heads, ffn, vocab
    "tiny": (256, 4, 4, 4, 768, 4096),
    "40m": (512, 8, 8, 8, 1408, 32000),
    "110m": (768, 12, 12, 12, 2048, 32000),
    "1b": (2048, 16, 32, 8, 8192, 32000),
}


def reset_peak_memory(device: str) -> None:
    """Start a new peak: CUDA's allocator statistics, or the kernel's RSS high-water mark (VmHWM)."""
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory(device: str) -> int:
    """Peak bytes since `reset_peak_memory`: CUDA allocated, or the process's peak resident set."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def model_state_bytes(model, optimizer) -> int:
    """This rank's bytes of parameters, gradients (as many as parameters during a step) and
    optimizer state: what DDP replicates and FSDP shards (DiLoCo adds its outer state)."""
    from forgather.ml.unwrap import local_nbytes

    parameters = sum(local_nbytes(p) for p in model.parameters())
    states = sum(
        local_nbytes(value)
        for state in optimizer.state.values()
        for value in state.values()
        if hasattr(value, "numel") and value.dim() > 0
    )
    return 2 * parameters + states


def worker(options: argparse.Namespace) -> None:
    import torch

    sys.path.insert(0, str(REPO))
    from forgather.ml.models.factory import build_model
    from forgather.ml.train.args import TrainingArguments
    from forgather.ml.train.flops import device_peak_flops, flops_per_token
    from forgather.ml.train.trainer import Trainer
    from forgather.ml.unwrap import unwrap_model

    hidden, layers, heads, kv, ffn, vocab = SHAPES[options.shape]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    # Data-parallel strategies split the global batch over the ranks; a pipeline's ranks all see it,
    # cut into 2 micro-batches per stage (1F1B needs at least one per stage).
    accumulation = 2 * world if options.strategy == "pipeline" else 1
    per_device = options.batch_size // (accumulation if options.strategy == "pipeline" else world)
    if per_device < 1:
        sys.exit(f"--batch-size {options.batch_size} is too small for {options.strategy} x {world}")
    samples = (options.warmup + options.steps) * options.batch_size
    generator = torch.Generator().manual_seed(0)
    data = torch.randint(0, vocab, (samples, options.seq_len), generator=generator)
    dataset = [{"input_ids": row} for row in data]

    timings: list[float] = []
    sent = {"bytes": 0, "warmup": 0}

    class Timer:
        def on_step_end(self, args, state, control, **kwargs):
            if options.device == "cuda":
                torch.cuda.synchronize()
            timings.append(time.perf_counter())
            if state.global_step == options.warmup:  # measure the steady state, not the set-up
                reset_peak_memory(options.device)
                sent["warmup"] = sent["bytes"] + getattr(trainer.strategy, "bytes_reduced", 0)

        def on_train_begin(self, args, state, control, **kwargs):
            ddp = getattr(trainer.strategy, "_ddp", None)
            if ddp is not None:  # count the bytes DDP all-reduces (its default hook, counted)
                from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import (
                    allreduce_hook,
                )

                def counting_hook(process_group, bucket):
                    sent["bytes"] += bucket.buffer().numel() * bucket.buffer().element_size()
                    return allreduce_hook(process_group, bucket)

                ddp.register_comm_hook(None, counting_hook)

    def model_init():
        torch.manual_seed(0)
        return build_model(
            preset="tiny_llama_4m",
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv,
            intermediate_size=ffn,
            vocab_size=vocab,
            max_position_embeddings=max(options.seq_len, 2048),
        )

    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            per_device_train_batch_size=per_device,
            gradient_accumulation_steps=accumulation,
            max_steps=options.warmup + options.steps,
            learning_rate=1e-4,
            lr_scheduler_type="constant",
            logging_steps=10**6,
            save_strategy="no",
            eval_strategy="no",
            parallelism=options.strategy,
            diloco_sync_every=options.sync_every,
            bf16=options.bf16,
            device=None if options.device == "cuda" else "cpu",
            seed=0,
        )
        trainer = Trainer(
            args=args, model_init=model_init, train_dataset=dataset, callbacks=[Timer()]
        )
        trainer.train()
        measured = timings[-1] - timings[options.warmup - 1]
        peak = peak_memory(options.device)
        total_sent = sent["bytes"] + getattr(trainer.strategy, "bytes_reduced", 0)
        sync_bytes = (total_sent - sent["warmup"]) / options.steps
        loss = trainer.state.log_history[-1].get("train_loss")
        peaks = trainer.env.gather_object(peak)
        extra = getattr(trainer.strategy, "extra_state_bytes", lambda: 0)()
        states = trainer.env.gather_object(
            model_state_bytes(trainer.model, trainer.optimizer) + extra
        )
        if trainer.env.is_main_process:
            tokens = options.steps * options.batch_size * options.seq_len
            record = {
                "strategy": options.strategy,
                "nproc": world,
                "tokens_per_s": tokens / measured,
                "step_s": measured / options.steps,
                "peak_bytes": peaks,
                "state_bytes": states,
                "sync_bytes_per_step": sync_bytes
                if options.strategy in ("ddp", "diloco")
                else None,
                "train_loss": loss,
                "parameters": sum(p.numel() for p in trainer.model.parameters()),
                # the trainer's own estimate (forgather.ml.train.flops), from the whole model's
                # config: every strategy's rows count the same FLOPs
                "flops_per_token": flops_per_token(
                    unwrap_model(trainer.model).config, options.seq_len
                ),
                "peak_flops": device_peak_flops(trainer.device),
            }
            with open(options.result, "a") as f:
                f.write(json.dumps(record) + "\n")
        trainer.close()


def mfu_column(row: dict, peak_tflops: float | None) -> str:
    """Model FLOPs utilisation per device: against --peak-tflops, else the device's data-sheet
    peak the worker found (`device_peak_flops`); "-" on CPU and unknown devices."""
    peak = peak_tflops * 1e12 if peak_tflops else row.get("peak_flops")
    if not peak:
        return f"{'-':>7}"
    achieved = row["tokens_per_s"] * row["flops_per_token"] / row["nproc"]
    return f"{100 * achieved / peak:>6.1f}%"


def run_row(options: argparse.Namespace, strategy: str, nproc: int, result: Path) -> None:
    command = [sys.executable]
    if nproc > 1:
        command += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    command += [
        __file__, "--worker", "--strategy", strategy, "--result", str(result),
        "--shape", options.shape, "--device", options.device, "--steps", str(options.steps),
        "--warmup", str(options.warmup), "--batch-size", str(options.batch_size),
        "--seq-len", str(options.seq_len), "--sync-every", str(options.sync_every),
        *(["--bf16"] if options.bf16 else []),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(options.threads)}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        sys.exit(f"{strategy} x {nproc} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def sync_column(row: dict, base: dict) -> str:
    """MiB all-reduced per optimizer step for synchronisation, and the ratio to DDP's."""
    sent, base_sent = row.get("sync_bytes_per_step"), base.get("sync_bytes_per_step")
    if sent is None or not base_sent:
        return f"{'-':>15}{'-':>8}"
    return f"{sent / 2**20:>15.2f}{sent / base_sent:>8.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", default="ddp", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--nprocs", default="2,4", help="process counts to compare (default 2,4)")
    parser.add_argument("--strategies", default="ddp,fsdp,pipeline,diloco")
    parser.add_argument("--sync-every", type=int, default=4, help="DiLoCo's H")
    parser.add_argument("--steps", type=int, default=6, help="measured optimizer steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8, help="global batch (samples/step)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per process (CPU)")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="the device's dense peak for MFU (default: its data-sheet bf16 peak, as the trainer's "
        "MFU uses; none on CPU)",
    )
    options = parser.parse_args()
    if options.worker:
        worker(options)
        return

    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "rows.jsonl"
        for nproc in (int(n) for n in options.nprocs.split(",")):
            for strategy in options.strategies.split(","):
                print(f"running {strategy} x {nproc} ...", file=sys.stderr, flush=True)
                run_row(options, strategy, nproc, result)
        rows = [json.loads(line) for line in result.read_text().splitlines()]

    print(
        f"\n{options.shape} model ({rows[0]['parameters'] / 1e6:.1f}M parameters), {options.device}, "
        f"global batch {options.batch_size} x {options.seq_len} tokens, {options.steps} steps"
    )
    header = (
        f"{'strategy':<10}{'procs':>6}{'tokens/s':>12}{'vs ddp':>8}{'MFU':>7}"
        f"{'state/rank MiB':>16}{'vs ddp':>8}{'peak MiB':>14}{'vs ddp':>8}"
        f"{'sync MiB/step':>15}{'vs ddp':>8}"
    )
    print(header)
    print("-" * len(header))
    # peak: CUDA's max_memory_allocated per GPU; CPU: the peak resident set per process
    for row in rows:
        base = next(r for r in rows if r["strategy"] == "ddp" and r["nproc"] == row["nproc"])
        peak = max(row["peak_bytes"]) / 2**20
        base_peak = max(base["peak_bytes"]) / 2**20
        state = max(row["state_bytes"]) / 2**20
        base_state = max(base["state_bytes"]) / 2**20
        print(
            f"{row['strategy']:<10}{row['nproc']:>6}{row['tokens_per_s']:>12.0f}"
            f"{row['tokens_per_s'] / base['tokens_per_s']:>8.2f}{mfu_column(row, options.peak_tflops)}"
            f"{state:>16.0f}{state / base_state:>8.2f}{peak:>14.0f}{peak / base_peak:>8.2f}"
            f"{sync_column(row, base)}"
        )


if __name__ == "__main__":
    main()
