"""Training speed and memory on one GPU: forgather's Trainer and model versus Hugging Face's, side by side.

    python benchmarks/train_gpu.py                                   # 110M Llama shape, seq 2048, batch 16
    python benchmarks/train_gpu.py --rows hf_compiled,trainer_fused --steps 20
    python benchmarks/train_gpu.py --shape 1b --batch-size 8 --ablation   # the memory ablation
    python benchmarks/train_gpu.py --device cpu --shape tiny --seq-len 64 --batch-size 2   # a smoke test

Rows, run one after another in this process on the same shape, batch, sequence length and dtype
(bf16 autocast, fused AdamW, random tokens; the caching allocator emptied and its peak reset
between rows):

* `hf_compiled`    Hugging Face `LlamaForCausalLM` in a plain loop under `torch.compile`, its own
                   loss (`labels=`) — the baseline a user already has;
* `ours_compiled`  forgather's model (the same shape, tied embeddings) in the same plain loop;
* `trainer_logits` forgather's `Trainer` (`torch_compile`, `bf16`) with the loss from the logits
                   (`fused_loss: off`, the trainer before the fused loss);
* `trainer_model_loss` the same with the model's own loss from the labels (`fused_loss: model`:
                   head and loss compiled together, as in `ours_compiled`'s loop);
* `trainer_fused`  the same with the fused linear cross-entropy (`fused_loss: auto`: Liger's kernel
                   when `liger-kernel` is installed, else the chunked PyTorch loop);
* `trainer_fused_torch` the same with `fused_loss: torch` (only when Liger is installed);
* `trainer_fused_obw` `trainer_fused` plus `optimizer_in_backward` (no clipping: `max_grad_norm: null`);
* `trainer_fp8`    `trainer_fused` plus `fp8: tensorwise` (torchao float8 linear layers; only on a
                   GPU of compute capability 8.9+ with torchao installed).

`--ablation` runs the trainer from fp32 weights and compute in eager mode (`abl_fp32_eager`), then adds
bf16 autocast, activation checkpointing, the fused loss, `torch.compile`, the optimizer step in
the backward pass and FP8 one at a time (`abl_*`), each row's ratios taken against the first row
that ran. A row that runs out of GPU memory is reported as such and the next one runs.

The trainer rows also report the trainer's own logged tokens/s and MFU (its `SpeedMetricsCallback`,
over the same timed steps) beside the benchmark's clock: the two agree when the trainer's throughput
logging is right.

Printed per row: tokens/s over the timed steps (after `--warmup` steps: compilation), MFU (the
trainer's own `flops_per_token` and `device_peak_flops`), peak allocated memory; then each row's
ratio to `hf_compiled` and to `ours_compiled`. `--json FILE` keeps the numbers (default
benchmarks/results/train_gpu-<date>.json on CUDA).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
    "110m": dict(
        hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12
    ),
    "1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
    ),  # fmt: skip
}
# The trainer rows: training arguments on top of the base (constant LR, clipping at 1.0).
FAST = dict(bf16=True, torch_compile=True)
TRAINER_ROWS: dict[str, dict] = {
    "trainer_logits": {**FAST, "fused_loss": "off"},
    "trainer_model_loss": {**FAST, "fused_loss": "model"},
    "trainer_fused": {**FAST, "fused_loss": "auto"},
    "trainer_fused_torch": {**FAST, "fused_loss": "torch"},
    "trainer_fused_obw": {
        **FAST, "fused_loss": "auto", "optimizer_in_backward": True, "max_grad_norm": None
    },
    "trainer_fp8": {**FAST, "fused_loss": "auto", "fp8": "tensorwise"},
    # --ablation: the memory switches added one at a time, from fp32 weights and compute, eager
    "abl_fp32_eager": {"bf16": False, "fused_loss": "off"},
    "abl_bf16": {"bf16": True, "fused_loss": "off"},
    "abl_checkpointing": {"bf16": True, "fused_loss": "off", "gradient_checkpointing": True},
    "abl_fused_loss": {"bf16": True, "fused_loss": "auto", "gradient_checkpointing": True},
    "abl_compile": {**FAST, "fused_loss": "auto", "gradient_checkpointing": True},
    "abl_in_backward": {
        **FAST, "fused_loss": "auto", "gradient_checkpointing": True,
        "optimizer_in_backward": True, "max_grad_norm": None,
    },
    "abl_fp8": {
        **FAST, "fused_loss": "auto", "gradient_checkpointing": True,
        "optimizer_in_backward": True, "max_grad_norm": None, "fp8": "tensorwise",
    },
}  # fmt: skip
ROWS = ("hf_compiled", "ours_compiled", *TRAINER_ROWS)
DEFAULT_ROWS = ROWS[:8]
FP8_ROWS = tuple(row for row, settings in TRAINER_ROWS.items() if settings.get("fp8"))
ABLATION_ROWS = tuple(r for r in ROWS if r.startswith("abl_"))


def hf_model(options):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=options.vocab,
        max_position_embeddings=options.seq_len,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
        **SHAPES[options.shape],
    )
    return LlamaForCausalLM(config)


def our_model(options):
    from forgather.ml.models.factory import build_model

    return build_model(
        preset="tiny_llama_4m",
        vocab_size=options.vocab,
        max_position_embeddings=options.seq_len,
        tie_word_embeddings=True,
        attention_backend="sdpa",
        **SHAPES[options.shape],
    )


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, rows: int, seq_len: int, vocab: int):
        generator = torch.Generator().manual_seed(0)
        self.data = torch.randint(0, vocab, (rows, seq_len), generator=generator)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.data[index]}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(model, options, device) -> tuple[float, float]:
    """Seconds for the timed steps of a hand-written compiled loop, and the last loss."""
    model.to(device).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-4, fused=device.type == "cuda", foreach=None
    )
    compiled = torch.compile(model)
    data = RandomTokens(options.batch_size * 4, options.seq_len, options.vocab).data
    started = 0.0
    for step in range(options.warmup + options.steps):
        if step == options.warmup:
            sync(device)
            started = time.perf_counter()
        ids = data[(step % 4) * options.batch_size : (step % 4 + 1) * options.batch_size]
        ids = ids.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = compiled(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - started, float(loss.detach())


def trainer_run(model, options, device, settings: dict) -> tuple[float, float]:
    from forgather.ml.train.args import TrainingArguments
    from forgather.ml.train.callbacks import SpeedMetricsCallback
    from forgather.ml.train.trainer import Trainer

    marks: dict[int, float] = {}

    class Clock:
        def __getattr__(self, name):
            if name.startswith("on_"):
                return lambda *args, **kwargs: None
            raise AttributeError(name)

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (options.warmup, options.warmup + options.steps):
                sync(device)
                marks[state.global_step] = time.perf_counter()

    losses: list[float] = []
    logged: list[dict] = []  # the trainer's own speed logs of the timed steps

    class Losses(Clock):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(logs["loss"])
                if state.global_step > options.warmup and "tokens_per_second" in logs:
                    logged.append(logs)

    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            device=device.type,
            max_steps=options.warmup + options.steps,
            per_device_train_batch_size=options.batch_size,
            learning_rate=1e-4,
            lr_scheduler_type="constant",
            warmup_steps=0,
            max_grad_norm=1.0,
            # logs at the end of the warm-up and through the timed steps (the trainer's own meter)
            logging_steps=math.gcd(options.warmup, options.steps),
            save_strategy="no",
            dataloader_pin_memory=device.type == "cuda",
        )
        args = dataclasses.replace(args, **settings)
        trainer = Trainer(
            args=args,
            model=model,
            train_dataset=RandomTokens(
                options.batch_size * (options.warmup + options.steps),
                options.seq_len,
                options.vocab,
            ),
            # the speed callback the templates add; it writes into the logs Losses reads
            callbacks=[Clock(), SpeedMetricsCallback(seq_len=options.seq_len), Losses()],
        )
        trainer.train()
    seconds = marks[options.warmup + options.steps] - marks[options.warmup]
    # equal tokens per logged interval: the rate over all of them is the harmonic mean
    own = {}
    for key in ("tokens_per_second", "mfu"):
        rates = [log[key] for log in logged if log.get(key)]
        if rates and len(rates) == len(logged):
            own[key] = len(rates) / sum(1 / rate for rate in rates)
    return seconds, losses[-1] if losses else float("nan"), own


def run_row(name: str, options, device) -> dict:
    from forgather.ml.models.transformer.loss import liger_available
    from forgather.ml.train.flops import device_peak_flops, flops_per_token

    torch.manual_seed(0)
    model = hf_model(options) if name == "hf_compiled" else our_model(options)
    fpt = flops_per_token(model, options.seq_len)
    parameters = sum(p.numel() for p in model.parameters())
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    own: dict = {}
    if name in ("hf_compiled", "ours_compiled"):
        seconds, loss = plain_loop(model, options, device)
    else:
        seconds, loss, own = trainer_run(model, options, device, TRAINER_ROWS[name])
    tokens = options.steps * options.batch_size * options.seq_len
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    peak_flops = device_peak_flops(device)
    row = {
        "row": name,
        "tokens_per_s": tokens / seconds,
        "mfu": fpt * tokens / seconds / peak_flops if peak_flops else None,
        "peak_gib": peak / 2**30 if peak is not None else None,
        "loss": loss,
        "parameters": parameters,
    }
    if own:
        row["trainer_logged_tokens_per_s"] = own.get("tokens_per_second")
        row["trainer_logged_mfu"] = own.get("mfu")
    if TRAINER_ROWS.get(name, {}).get("fused_loss") == "auto":
        row["fused_backend"] = (
            ("liger" if liger_available() else "torch") if device.type == "cuda" else "off on CPU"
        )
    del model
    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def fp8_unavailable(device: torch.device) -> str | None:
    """Why the FP8 rows cannot run here, or None."""
    if device.type != "cuda":
        return "FP8 needs a CUDA GPU"
    if torch.cuda.get_device_capability(device) < (8, 9):
        return "FP8 needs compute capability 8.9+"
    try:
        import torchao.float8  # noqa: F401
    except ImportError:
        return "torchao is not installed"
    return None


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="110m")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rows", default=",".join(DEFAULT_ROWS))
    parser.add_argument(
        "--ablation", action="store_true", help="the memory ablation rows (abl_*) instead"
    )
    parser.add_argument("--json", type=Path, default=None)
    options = parser.parse_args()
    device = torch.device(options.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    from forgather.ml.models.transformer.loss import liger_available

    rows = list(ABLATION_ROWS) if options.ablation else [r for r in options.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"--rows: unknown {unknown}; known: {', '.join(ROWS)}")
    if "trainer_fused_torch" in rows and not (device.type == "cuda" and liger_available()):
        rows.remove("trainer_fused_torch")  # trainer_fused is already the torch backend
    fp8_note = fp8_unavailable(device)
    if fp8_note:
        skipped = [r for r in rows if r in FP8_ROWS]
        rows = [r for r in rows if r not in FP8_ROWS]
        if skipped:
            print(f"skipping {', '.join(skipped)}: {fp8_note}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"{name}, torch {torch.__version__}, shape {options.shape}, vocab {options.vocab}, "
        f"seq {options.seq_len}, batch {options.batch_size}, {options.warmup} warm-up + "
        f"{options.steps} timed steps, bf16 autocast, fused AdamW",
        flush=True,
    )
    results, failed = [], []
    for row in rows:
        started = time.perf_counter()
        try:
            result = run_row(row, options, device)
        except torch.OutOfMemoryError:
            failed.append({"row": row, "out_of_memory": True})
            print(f"  {row:20s} out of GPU memory at batch {options.batch_size}", flush=True)
            gc.collect()
            torch._dynamo.reset()
            torch.cuda.empty_cache()
            continue
        results.append(result)
        own = ""
        if result.get("trainer_logged_tokens_per_s"):
            own = (
                f"  trainer's log {result['trainer_logged_tokens_per_s']:,.0f} tok/s "
                f"({result['trainer_logged_tokens_per_s'] / result['tokens_per_s']:.3f}x)"
            )
        print(
            f"  {row:20s} {result['tokens_per_s']:>12,.0f} tok/s  MFU {fmt(result['mfu'], '6.1%')}"
            f"  peak {fmt(result['peak_gib'], '6.2f')} GiB  loss {result['loss']:.3f}"
            f"{'  (' + result['fused_backend'] + ')' if 'fused_backend' in result else ''}"
            f"{own}  [{time.perf_counter() - started:.0f} s]",
            flush=True,
        )
    base = {r["row"]: r for r in results}
    first_ablation = next((r["row"] for r in results if r["row"].startswith("abl_")), None)
    print("\nratios (tokens/s, peak memory):")
    for result in results:
        cells = []
        for ref in dict.fromkeys(("hf_compiled", "ours_compiled", first_ablation)):
            if ref is None:
                continue
            if ref in base and ref != result["row"]:
                speed = result["tokens_per_s"] / base[ref]["tokens_per_s"]
                memory = (
                    f"{result['peak_gib'] / base[ref]['peak_gib']:.2f}x"
                    if result["peak_gib"] and base[ref]["peak_gib"]
                    else "-"
                )
                cells.append(f"vs {ref}: {speed:.2f}x speed, {memory} memory")
        print(f"  {result['row']:20s} " + "; ".join(cells))
    out = options.json
    if out is None and device.type == "cuda":
        out = Path(__file__).parent / "results" / f"train_gpu-{datetime.now():%Y%m%d-%H%M}.json"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"device": name, "torch": torch.__version__, "options": vars(options) | {
            "json": str(options.json)}, "rows": results + failed}  # fmt: skip
        out.write_text(json.dumps(payload, indent=2))
        print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
