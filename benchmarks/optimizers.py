"""Optimizer step time and state memory, ours beside the reference implementations, in one process.

    python benchmarks/optimizers.py [--device cuda] [--shape 110m|1b|tiny] [--steps 20] [--only a,b]
        [--adafactor-sizes 768x2048,8192x8192]

Every optimizer steps the same Llama-shaped model (our causal LM at `--shape`; 110m: hidden 768,
12 layers, ffn 2048, vocab 32000 tied) with the same fixed random gradients; printed per optimizer:
the mean step time over `--steps` steps (after 3 warm-up steps, synchronised on a GPU), the
optimizer state in bytes per parameter, the peak memory the step adds above the weights, gradients
and state (GPU), and the step time as a ratio to torch's AdamW (fused on a GPU, foreach on a CPU).
Pairs measured against their peers:

- Adafactor: ours (torch path, and the Triton kernel on a GPU) vs `torch.optim.Adafactor` and
  `transformers.optimization.Adafactor`, all at a constant learning rate without momentum;
- Muon: ours vs `torch.optim.Muon` on the hidden matrices (AdamW for the rest in both);
- Apollo, Apollo-mini, SinkGD, SGD: against AdamW (no peer in torch or transformers).

`--adafactor-sizes` (GPU) also times Adafactor's PyTorch path against its Triton kernel on single
matrices of the given sizes, fp32 and bf16 weights.

Writes the raw figures to benchmarks/results/optimizers-<date>-<shape>-<device>.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from forgather.ml.models.factory import build_model  # noqa: E402
from forgather.ml.optim import (  # noqa: E402
    Adafactor,
    Multiopt,
    is_hidden_matrix,
    make_optimizer,
    weight_decay_groups,
)

SHAPES = {
    "110m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                 num_attention_heads=12, num_key_value_heads=12, vocab_size=32000),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
    "tiny": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=4, vocab_size=4096),
}  # fmt: skip
LR = 1e-3


def _hybrid(named, build_matrices: Callable) -> torch.optim.Optimizer:
    """`build_matrices` over the hidden matrices and AdamW over the rest, as one optimizer."""
    matrices = [p for n, p in named if is_hidden_matrix(n, p)]
    rest = [(n, p) for n, p in named if not is_hidden_matrix(n, p)]
    adamw = torch.optim.AdamW(weight_decay_groups(rest, 0.0), lr=LR)
    return Multiopt([build_matrices(matrices), adamw])


def contenders(device: str) -> dict[str, Callable]:
    """name -> factory(named_parameters) of each optimizer measured."""
    from transformers.optimization import Adafactor as HFAdafactor

    cuda = device == "cuda"
    adamw_kind = {"fused": True} if cuda else {"foreach": True}
    plain = lambda named: [p for _, p in named]  # noqa: E731
    rows = {
        "adamw": lambda named: torch.optim.AdamW(plain(named), lr=LR, **adamw_kind),
        "sgd": lambda named: make_optimizer(named, name="sgd", lr=LR, momentum=0.9),
        "adafactor_torch_peer": lambda named: torch.optim.Adafactor(plain(named), lr=LR),
        "adafactor_hf_peer": lambda named: HFAdafactor(
            plain(named), lr=LR, relative_step=False, scale_parameter=False, warmup_init=False
        ),
        "adafactor": lambda named: Adafactor(
            plain(named), lr=LR, relative_step=False, scale_parameter=False, kernel="torch"
        ),
        "muon_torch_peer": lambda named: _hybrid(
            named, functools.partial(torch.optim.Muon, lr=LR, adjust_lr_fn="match_rms_adamw")
        ),
        "muon": lambda named: make_optimizer(named, name="muon", lr=LR),
        "apollo": lambda named: make_optimizer(named, name="apollo", lr=LR),
        "apollo_mini": lambda named: make_optimizer(named, name="apollo_mini", lr=LR),
        "sinkgd": lambda named: make_optimizer(named, name="sinkgd", lr=LR),
    }
    if cuda:
        rows["adafactor_triton"] = lambda named: Adafactor(
            plain(named), lr=LR, relative_step=False, scale_parameter=False, kernel="triton"
        )
    return rows


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )


def measure(model, factory: Callable, steps: int, device: str) -> dict[str, float]:
    named = list(model.named_parameters())
    generator = torch.Generator(device=device).manual_seed(0)
    for _, param in named:
        param.grad = torch.randn(param.shape, generator=generator, device=device) * 1e-3
    optimizer = factory(named)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        optimizer.step()
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    sync()
    seconds = (time.perf_counter() - started) / steps
    parameters = sum(p.numel() for _, p in named)
    row = {
        "step_ms": seconds * 1000,
        "state_bytes_per_param": state_bytes(optimizer) / parameters,
    }
    if device == "cuda":
        row["step_peak_extra_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
    del optimizer
    for _, param in named:
        param.grad = None
    return row


def adafactor_kernels(sizes: list[tuple[int, int]], steps: int) -> list[dict]:
    """Adafactor's step on one matrix of each size (fp32 and bf16 weights): the PyTorch path vs
    the Triton kernel, on the GPU."""
    rows = []
    for rows_, cols in sizes:
        for dtype in (torch.float32, torch.bfloat16):
            times = {}
            for kernel in ("torch", "triton"):
                param = torch.nn.Parameter(torch.randn(rows_, cols, device="cuda", dtype=dtype))
                param.grad = torch.randn_like(param) * 1e-3
                optimizer = Adafactor([param], lr=LR, relative_step=False, kernel=kernel)
                for _ in range(3):
                    optimizer.step()
                torch.cuda.synchronize()
                started = time.perf_counter()
                for _ in range(steps):
                    optimizer.step()
                torch.cuda.synchronize()
                times[kernel] = (time.perf_counter() - started) / steps * 1000
            row = {"shape": f"{rows_}x{cols}", "dtype": str(dtype).removeprefix("torch."),
                   "torch_ms": times["torch"], "triton_ms": times["triton"]}  # fmt: skip
            rows.append(row)
            print(f"adafactor {row['shape']:>11s} {row['dtype']:8s} torch {times['torch']:7.3f} ms"
                  f"  triton {times['triton']:7.3f} ms  triton speed-up "
                  f"{times['torch'] / times['triton']:.2f}x")  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--only", default="", help="comma-separated optimizer names")
    parser.add_argument(
        "--adafactor-sizes",
        default="",
        help="GPU: also time Adafactor's torch path vs its Triton kernel on matrices ROWSxCOLS,...",
    )
    options = parser.parse_args()
    shape = options.shape or ("110m" if options.device == "cuda" else "tiny")
    torch.manual_seed(0)
    model = build_model(preset="tiny_llama_4m", max_position_embeddings=2048, **SHAPES[shape])
    model.to(options.device)
    parameters = sum(p.numel() for p in model.parameters())
    device_name = (
        torch.cuda.get_device_name()
        if options.device == "cuda"
        else f"cpu x{torch.get_num_threads()}"
    )
    print(f"{parameters / 1e6:.1f}M parameters ({shape}), {device_name}, torch {torch.__version__}")
    rows = contenders(options.device)
    wanted = [name for name in options.only.split(",") if name] or list(rows)
    results: dict[str, dict[str, float]] = {}
    for name in wanted:
        results[name] = measure(model, rows[name], options.steps, options.device)
    base = results.get("adamw", {}).get("step_ms")
    header = f"{'optimizer':22s} {'step ms':>9s} {'x AdamW':>8s} {'state B/param':>14s}"
    print(header + ("  step peak +MiB" if options.device == "cuda" else ""))
    for name, row in results.items():
        ratio = f"{row['step_ms'] / base:8.2f}" if base else f"{'-':>8s}"
        line = f"{name:22s} {row['step_ms']:9.2f} {ratio} {row['state_bytes_per_param']:14.2f}"
        if "step_peak_extra_mib" in row:
            line += f"  {row['step_peak_extra_mib']:14.1f}"
        print(line)
    pairs = [("adafactor", "adafactor_torch_peer"), ("adafactor", "adafactor_hf_peer"),
             ("adafactor_triton", "adafactor"), ("adafactor_triton", "adafactor_torch_peer"),
             ("muon", "muon_torch_peer")]  # fmt: skip
    for ours, peer in pairs:
        if ours in results and peer in results:
            speedup = results[peer]["step_ms"] / results[ours]["step_ms"]
            print(f"{ours} vs {peer}: {speedup:.2f}x the speed")
    kernel_rows = []
    if options.adafactor_sizes and options.device == "cuda":
        sizes = [
            tuple(int(x) for x in size.split("x")) for size in options.adafactor_sizes.split(",")
        ]
        kernel_rows = adafactor_kernels(sizes, options.steps)
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"optimizers-{date.today():%Y%m%d}-{shape}-{options.device}.json"
    path.write_text(json.dumps({"device": device_name, "shape": shape, "parameters": parameters,
                                "torch": torch.__version__, "results": results,
                                "adafactor_kernels": kernel_rows}, indent=1))  # fmt: skip
    print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
