"""Measuring training speed: where a model runs, and a meter of tokens/s, samples/s, FLOP/s and
MFU over an interval (FLOPs per token and device peaks: `forgather.ml.train.flops`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from forgather.ml.unwrap import unwrap_model


def model_device(model: Any) -> torch.device:
    """Where the model's first parameter lives (CPU for a model without parameters)."""
    try:
        return next(unwrap_model(model).parameters()).device
    except (StopIteration, AttributeError, TypeError):
        return torch.device("cpu")


def _synchronize(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


class ThroughputMeter:
    """Tokens/s, samples/s, FLOP/s and MFU over an interval.

    `update()` counts work, `measure()` returns the rates since the last reset (and starts a new
    interval). On CUDA the device is synchronized before the clock is read, so queued kernels count
    in the interval that launched them. `peak_flops` is the peak of all devices together (per-device
    peak x number of devices); without it there is no `mfu`. Time spent outside training (eval,
    checkpoints) can be taken out with `exclude(seconds)`.
    """

    def __init__(
        self,
        flops_per_token: float | None = None,
        peak_flops: float | None = None,
        device: Any = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.device = torch.device(device) if device is not None else None
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        _synchronize(self.device)
        self.start = self.clock()
        self.tokens = 0
        self.samples = 0
        self.steps = 0
        self.excluded = 0.0

    def update(self, tokens: int = 0, samples: int = 0, steps: int = 0) -> None:
        self.tokens += int(tokens)
        self.samples += int(samples)
        self.steps += int(steps)

    def exclude(self, seconds: float) -> None:
        self.excluded += max(0.0, float(seconds))

    def measure(self, reset: bool = True) -> dict[str, float]:
        """The interval's rates: `elapsed` always; the others when their count is positive."""
        _synchronize(self.device)
        elapsed = max(self.clock() - self.start - self.excluded, 1e-9)
        result: dict[str, float] = {"elapsed": elapsed}
        if self.tokens > 0:
            result["tokens_per_second"] = self.tokens / elapsed
            if self.flops_per_token:
                flops = self.flops_per_token * self.tokens / elapsed
                result["flops_per_second"] = flops
                if self.peak_flops:
                    result["mfu"] = flops / self.peak_flops
        if self.samples > 0:
            result["samples_per_second"] = self.samples / elapsed
        if self.steps > 0:
            result["steps_per_second"] = self.steps / elapsed
        if reset:
            self.reset()
        return result


def format_count(value: float) -> str:
    """12345 -> '12.3k', 1.5e9 -> '1.50G'."""
    if value is None or not math.isfinite(value):
        return str(value)
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            scaled = value / limit
            return f"{scaled:.3g}{suffix}" if scaled < 100 else f"{scaled:.0f}{suffix}"
    return f"{value:.3g}" if value != int(value) else str(int(value))
