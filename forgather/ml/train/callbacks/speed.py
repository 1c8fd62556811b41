"""`SpeedMetricsCallback`: tokens/s, samples/s, FLOPs per token and MFU in the training logs."""

from __future__ import annotations

from typing import Any

from forgather.ml.train.callbacks.base import TrainerCallback
from forgather.ml.train.callbacks.eval_records import is_eval_record
from forgather.ml.train.flops import device_peak_flops, flops_per_token
from forgather.ml.train.throughput import ThroughputMeter, model_device


class SpeedMetricsCallback(TrainerCallback):
    """Adds `tokens_per_second`, `samples_per_second`, `flops_per_token` and `mfu` to train logs.

    It writes into the `logs` dict passed to `on_log`, so register it BEFORE the callbacks that print
    or store logs (progress, JSON lines, TensorBoard). Tokens come from `state.num_input_tokens_seen`
    (all ranks together); when the trainer leaves that at 0 they are estimated as samples x `seq_len`.
    Samples are `state.effective_batch_size` per step. `mfu` (a fraction, 0..1) is omitted where the
    device has no known peak (CPU); `peak_flops` (per device) overrides the table. Time between a
    step's end and the next step's start that was spent evaluating or saving is not counted.
    """

    produces_log_metrics = True  # a hint for trainers that order callbacks

    def __init__(
        self,
        seq_len: int | None = None,
        flops_per_token: float | None = None,
        peak_flops: float | None = None,
    ):
        self.seq_len = seq_len
        self.fixed_flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.model: Any = None
        self.meter: ThroughputMeter | None = None
        self._fpt_cache: dict[int | None, float] = {}
        self._last_step = 0
        self._last_tokens = 0
        self._step_end_time: float | None = None
        self._paused = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.model = kwargs.get("model")
        device = model_device(self.model) if self.model is not None else None
        peak = self.peak_flops if self.peak_flops is not None else device_peak_flops(device)
        total_peak = peak * max(1, state.world_size) if peak else None
        self.meter = ThroughputMeter(None, total_peak, device)
        self._last_step = state.global_step
        self._last_tokens = state.num_input_tokens_seen

    def _flops_per_token(self, seq_len: int | None) -> float | None:
        if self.fixed_flops_per_token is not None:
            return float(self.fixed_flops_per_token)
        if self.model is None:
            return None
        if seq_len not in self._fpt_cache:
            try:
                self._fpt_cache[seq_len] = flops_per_token(self.model, seq_len)
            except Exception:
                return None
        return self._fpt_cache[seq_len]

    def on_step_begin(self, args, state, control, **kwargs):
        if self._paused and self.meter is not None and self._step_end_time is not None:
            self.meter.exclude(self.meter.clock() - self._step_end_time)
        self._paused = False

    def on_step_end(self, args, state, control, **kwargs):
        if self.meter is not None:
            self._step_end_time = self.meter.clock()

    def on_evaluate(self, args, state, control, **kwargs):
        self._paused = True

    def on_save(self, args, state, control, **kwargs):
        self._paused = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.meter is None:
            self.on_train_begin(args, state, control, **kwargs)
            return
        steps = state.global_step - self._last_step
        if logs is None or steps <= 0 or "train_runtime" in logs or is_eval_record(logs):
            return  # an eval record, the end-of-training summary, or nothing trained since
        tokens = state.num_input_tokens_seen - self._last_tokens
        samples = steps * max(0, state.effective_batch_size)
        if tokens <= 0 and self.seq_len and samples:
            tokens = samples * self.seq_len
        seq_len = self.seq_len or (round(tokens / samples) if tokens > 0 and samples else None)
        fpt = self._flops_per_token(seq_len)
        self.meter.flops_per_token = fpt
        self.meter.update(tokens=max(tokens, 0), samples=samples, steps=steps)
        rates = self.meter.measure()
        self._last_step = state.global_step
        self._last_tokens = state.num_input_tokens_seen
        if not state.is_world_process_zero:
            return
        for key in ("tokens_per_second", "samples_per_second", "mfu"):
            if key in rates:
                logs[key] = rates[key]
        if fpt is not None:
            logs["flops_per_token"] = fpt
