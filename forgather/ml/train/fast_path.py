"""Process-wide speed switches of a training run, in effect for the whole of `Trainer.train()`:
the SDPA backend (`sdpa_backend`), the activation-memory budget of the compiled graph's partitioner
(`activation_memory_budget`), TF32 matmuls (`tf32`) and CUDA's expandable segments
(`expandable_segments`). `check` refuses a combination that cannot
work before anything runs; `fast_path` applies them and restores torch's settings afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from forgather.ml.train.args import SDPA_BACKENDS

CUDA_ONLY_SDPA = ("cudnn", "efficient")


def _sdpa_backend(name: str) -> Any:
    from torch.nn.attention import SDPBackend

    return {
        "flash": SDPBackend.FLASH_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }[name]


def check(args: Any, device: torch.device) -> None:
    """One clear error for a switch this run cannot use (the names are the config keys)."""
    if args.sdpa_backend in CUDA_ONLY_SDPA and device.type != "cuda":
        raise ValueError(
            f"sdpa_backend={args.sdpa_backend} needs a CUDA device (this run trains on "
            f"{device.type}); use auto, flash or math"
        )
    if args.activation_memory_budget is not None and not args.torch_compile:
        raise ValueError(
            "activation_memory_budget needs torch_compile: true (the compiled graph's partitioner "
            "decides what to keep and what to recompute)"
        )


@contextlib.contextmanager
def fast_path(args: Any) -> Iterator[None]:
    """Apply `args`' SDPA backend, activation-memory budget, TF32 and allocator switches; restore
    on exit."""
    with contextlib.ExitStack() as stack:
        if args.sdpa_backend != "auto":
            from torch.nn.attention import sdpa_kernel

            stack.enter_context(sdpa_kernel([_sdpa_backend(args.sdpa_backend)]))
        if args.activation_memory_budget is not None:
            import torch._functorch.config as functorch_config

            stack.enter_context(
                functorch_config.patch(activation_memory_budget=args.activation_memory_budget)
            )
        if args.tf32 is not None:
            stack.enter_context(_tf32(args.tf32))
        if args.expandable_segments is not None:
            stack.enter_context(_expandable_segments(args.expandable_segments))
        yield


@contextlib.contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@contextlib.contextmanager
def _expandable_segments(enabled: bool) -> Iterator[None]:
    """Set the caching allocator's `expandable_segments` (process-wide), and put back what was."""
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None)
    if setter is None:  # torch before 2.9 names it differently
        setter = getattr(torch._C, "_cuda_cudaCachingAllocator_set_allocator_settings", None)
    if setter is None:
        raise ValueError(
            f"expandable_segments cannot be set at run time in torch {torch.__version__}; set "
            "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True in the environment instead"
        )
    was = "expandable_segments:True" in allocator_settings().replace(" ", "")
    setter(f"expandable_segments:{enabled}")
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()  # cached blocks of the old kind would serve the run otherwise
    try:
        yield
    finally:
        setter(f"expandable_segments:{was}")


def allocator_settings() -> str:
    """The caching allocator's settings as torch reports them, else as the environment set them
    ('' for the defaults)."""
    getter = getattr(torch._C, "_accelerator_getAllocatorSettings", None)
    if getter is not None:
        return getter()
    import os

    return os.environ.get("PYTORCH_ALLOC_CONF") or os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")


__all__ = ["SDPA_BACKENDS", "check", "fast_path"]
