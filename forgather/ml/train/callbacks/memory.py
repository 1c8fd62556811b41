"""Peak memory per log interval."""

from __future__ import annotations

import os
import sys
from typing import Any

from forgather.ml.train.callbacks.base import TrainerCallback

GIB = float(1 << 30)


def process_rss() -> int:
    """Resident set size of this process in bytes (0 where it cannot be read)."""
    try:
        import psutil

        return int(psutil.Process(os.getpid()).memory_info().rss)
    except Exception:
        return 0


def process_max_rss() -> int:
    """The process's lifetime peak resident set size in bytes (getrusage; 0 where unavailable)."""
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):
        return 0
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # Linux: KiB


class PeakMemoryCallback(TrainerCallback):
    """Adds the interval's peak memory (GiB) to each training log record on rank 0.

    On CUDA: `memory_peak_allocated_gb` and `memory_peak_reserved_gb` from
    `torch.cuda.max_memory_allocated/reserved`, whose peaks are then reset so the next record covers
    the next interval. Elsewhere: `memory_rss_peak_gb`, the highest process RSS sampled (psutil) at
    each step end of the interval, and `memory_rss_max_gb`, the lifetime peak from getrusage.
    It writes into the `logs` dict, so register it before the callbacks that print or store logs.
    """

    produces_log_metrics = True

    def __init__(self) -> None:
        self.device: Any = None
        self._rss_peak = 0

    def _cuda_device(self, model: Any) -> Any:
        import torch

        if model is not None:
            from forgather.ml.train.throughput import model_device

            device = model_device(model)
            if device.type == "cuda":
                return device
            return None
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return torch.device("cuda", torch.cuda.current_device())
        return None

    def on_train_begin(self, args, state, control, **kwargs):
        self.device = self._cuda_device(kwargs.get("model"))
        if self.device is not None:
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        self._rss_peak = process_rss()

    def _sample(self) -> None:
        if self.device is None:
            self._rss_peak = max(self._rss_peak, process_rss())

    def on_step_end(self, args, state, control, **kwargs):
        self._sample()

    def on_substep_end(self, args, state, control, **kwargs):
        self._sample()

    def measure(self) -> dict[str, float]:
        """The interval's peaks (GiB), and a new interval."""
        if self.device is not None:
            import torch

            result = {
                "memory_peak_allocated_gb": torch.cuda.max_memory_allocated(self.device) / GIB,
                "memory_peak_reserved_gb": torch.cuda.max_memory_reserved(self.device) / GIB,
            }
            torch.cuda.reset_peak_memory_stats(self.device)
            return result
        self._sample()
        result = {"memory_rss_peak_gb": self._rss_peak / GIB}
        max_rss = process_max_rss()
        if max_rss:
            result["memory_rss_max_gb"] = max_rss / GIB
        self._rss_peak = process_rss()
        return result

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "samples" in logs:
            return
        from forgather.ml.train.callbacks.progress import is_eval_record

        if is_eval_record(logs):
            return
        measured = self.measure()
        if state.is_world_process_zero:
            logs.update(measured)
