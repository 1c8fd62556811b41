"""Console progress: a rich progress bar on a terminal, one plain line per log record otherwise."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from typing import Any, TextIO

from forgather.ml.train.callbacks.base import TrainerCallback
from forgather.ml.train.callbacks.eval_records import EVAL_PREFIXES, EvalDedupe, is_eval_record


# Log keys that are not training metrics of a step (never shown as "loss" etc.).
def format_duration(seconds: float | None) -> str:
    """75 -> '1m15s', 3725 -> '1h02m', 9.4 -> '9s'."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def format_count(value: float) -> str:
    """12345 -> '12.3k'."""
    from forgather.ml.train.throughput import format_count as fc

    return fc(value)


def _number(value: Any) -> float | None:
    try:
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, bool):
            return None
        return float(value)
    except (TypeError, ValueError):
        return None


def format_value(value: Any) -> str:
    number = _number(value)
    if number is None:
        return str(value)
    if number == int(number) and abs(number) < 1e15:
        return str(int(number))
    if abs(number) < 1e-3 or abs(number) >= 1e5:
        return f"{number:.3e}"
    return f"{number:.4g}"


def count_parameters(model: Any) -> tuple[int, int]:
    """(all parameters, trainable parameters), shared tensors counted once."""
    from forgather.ml.unwrap import unwrap_model

    model = unwrap_model(model)
    total = trainable = 0
    for param in model.parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return total, trainable


def training_summary(args: Any, state: Any, model: Any = None) -> dict[str, Any]:
    """What is trained, where and how much: shown by InfoCallback and written to TensorBoard."""
    info: dict[str, Any] = {}
    if model is not None:
        from forgather.ml.train.throughput import model_device
        from forgather.ml.unwrap import model_class_name, unwrap_model

        inner = unwrap_model(model)
        total, trainable = count_parameters(inner)
        info["model"] = model_class_name(inner)
        info["parameters"] = total
        info["trainable_parameters"] = trainable
        device = model_device(inner)
        with contextlib.suppress(StopIteration, AttributeError, TypeError):
            info["dtype"] = str(next(inner.parameters()).dtype).replace("torch.", "")
        info["device"] = _device_name(device)
    info["world_size"] = state.world_size
    parallelism = getattr(args, "parallelism", "ddp")
    if state.world_size > 1 or parallelism != "ddp":
        info["parallelism"] = getattr(state, "parallelism", "") or parallelism
    per_device = state.train_batch_size or getattr(args, "per_device_train_batch_size", None)
    if per_device:
        info["per_device_batch_size"] = per_device
    accumulation = getattr(args, "gradient_accumulation_steps", None)
    if accumulation:
        info["gradient_accumulation_steps"] = accumulation
    effective = state.effective_batch_size or (
        per_device * (accumulation or 1) * max(1, state.world_size) if per_device else None
    )
    if effective:
        info["effective_batch_size"] = effective
    if state.max_steps:
        info["max_steps"] = state.max_steps
    if state.global_step:
        info["resumed_at_step"] = state.global_step
    for key in ("logging_steps", "eval_steps", "save_steps"):
        value = getattr(state, key, None)
        if value:
            info[key] = value
    output_dir = getattr(args, "output_dir", None)
    if output_dir:
        info["output_dir"] = str(output_dir)
    return info


def _device_name(device: Any) -> str:
    import torch

    if device.type == "cuda" and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


class ProgressCallback(TrainerCallback):
    """Training progress on rank 0.

    On a terminal (or `use_rich=True`): a rich progress bar with step/max_steps, the last loss,
    tokens/s and the ETA. Otherwise one plain line per training log record, e.g.
    `step 120/1000 | loss 3.21 | lr 1.0e-03 | grad 0.84 | 12.3k tok/s | eta 2m10s`,
    an `eval` line per evaluation, and a summary line at the end. `output` defaults to stdout.
    tokens/s is taken from the record (`tokens_per_second`, see SpeedMetricsCallback) or else
    computed from `state.num_input_tokens_seen`.
    """

    def __init__(self, output: TextIO | None = None, use_rich: bool | None = None):
        self._output = output
        self.use_rich = use_rich
        self._progress: Any = None
        self._task: Any = None
        self._dedupe = EvalDedupe()
        self._start_time: float | None = None
        self._start_step = 0
        self._last_log: tuple[float, int] | None = None  # (time, tokens seen)
        self._last_loss: float | None = None
        self._last_eval: dict[str, Any] = {}
        self._summary: dict[str, Any] = {}

    @property
    def output(self) -> TextIO:
        return self._output if self._output is not None else sys.stdout

    def _rich_wanted(self) -> bool:
        if self.use_rich is not None:
            return self.use_rich
        try:
            return bool(self.output.isatty())
        except (AttributeError, ValueError):
            return False

    def _print(self, line: str) -> None:
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self.output, flush=True)

    # ---- events ----

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self._start_time = time.monotonic()
        self._start_step = state.global_step
        self._last_log = (self._start_time, state.num_input_tokens_seen)
        if self._rich_wanted():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            console = Console(file=self.output, force_terminal=self.use_rich or None)
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "train", total=state.max_steps or None, completed=state.global_step, info=""
            )

    def on_step_end(self, args, state, control, **kwargs):
        if self._progress is not None and state.is_world_process_zero:
            self._progress.update(self._task, completed=state.global_step)

    def _eta(self, state) -> float | None:
        if self._start_time is None or not state.max_steps:
            return None
        done = state.global_step - self._start_step
        if done <= 0:
            return None
        rate = (time.monotonic() - self._start_time) / done
        return rate * max(0, state.max_steps - state.global_step)

    def _tokens_per_second(self, state, logs: dict[str, Any]) -> float | None:
        now = time.monotonic()
        previous, self._last_log = self._last_log, (now, state.num_input_tokens_seen)
        given = _number(logs.get("tokens_per_second"))
        if given is not None:
            return given
        if previous is None:
            return None
        tokens = state.num_input_tokens_seen - previous[1]
        elapsed = now - previous[0]
        return tokens / elapsed if tokens > 0 and elapsed > 0 else None

    def format_train_line(self, state, logs: dict[str, Any]) -> str:
        total = f"/{state.max_steps}" if state.max_steps else ""
        parts = [f"step {state.global_step}{total}"]
        loss = _number(logs.get("loss"))
        if loss is not None:
            parts.append(f"loss {loss:.4g}")
        lr = _number(logs.get("learning_rate"))
        if lr is not None:
            parts.append(f"lr {lr:.1e}")
        grad = _number(logs.get("grad_norm"))
        if grad is not None:
            parts.append(f"grad {grad:.3g}")
        tps = self._tokens_per_second(state, logs)
        if tps is not None:
            parts.append(f"{format_count(tps)} tok/s")
        mfu = _number(logs.get("mfu"))
        if mfu is not None:
            parts.append(f"mfu {mfu * 100:.1f}%")
        eta = self._eta(state)
        if eta is not None:
            parts.append(f"eta {format_duration(eta)}")
        return " | ".join(parts)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "samples" in logs:
            return  # text samples: TextSampleCallback prints them
        if is_eval_record(logs):
            self._show_eval(state, logs)
            return
        if "train_runtime" in logs:  # the trainer's end-of-training summary: shown at on_train_end
            self._summary = dict(logs)
            return
        loss = _number(logs.get("loss"))
        if loss is not None:
            self._last_loss = loss
        line = self.format_train_line(state, logs)
        if self._progress is not None:
            info = " | ".join(line.split(" | ")[1:])
            self._progress.update(self._task, completed=state.global_step, info=info)
        else:
            self._print(line)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.is_world_process_zero and metrics:
            self._show_eval(state, metrics)

    def _show_eval(self, state, metrics: dict[str, Any]) -> None:
        if not self._dedupe.first_time(state.global_step, metrics):
            return
        self._last_eval = dict(metrics)
        shown = [
            f"{key.removeprefix('eval_')} {format_value(value)}"
            for key, value in metrics.items()
            if key.startswith(EVAL_PREFIXES) and _number(value) is not None
        ]
        self._print(f"eval step {state.global_step} | " + " | ".join(shown))

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if self._progress is not None:
            self._progress.update(self._task, completed=state.global_step)
            self._progress.stop()
        elapsed = time.monotonic() - self._start_time if self._start_time is not None else None
        parts = [f"training done: step {state.global_step}"]
        if state.max_steps:
            parts[0] += f"/{state.max_steps}"
        if elapsed is not None:
            parts.append(f"time {format_duration(elapsed)}")
        train_loss = _number(self._summary.get("train_loss"))
        if train_loss is not None and math.isfinite(train_loss):
            parts.append(f"train loss {train_loss:.4g}")
        if self._last_loss is not None:
            parts.append(f"last loss {self._last_loss:.4g}")
        eval_loss = _number(self._last_eval.get("eval_loss"))
        if eval_loss is not None:
            parts.append(f"eval loss {eval_loss:.4g}")
        if state.num_input_tokens_seen:
            parts.append(f"{format_count(state.num_input_tokens_seen)} tokens")
        samples_per_second = _number(self._summary.get("train_samples_per_second"))
        if samples_per_second:
            parts.append(f"{samples_per_second:.3g} samples/s")
        if state.best_model_checkpoint:
            parts.append(f"best {state.best_model_checkpoint}")
        line = " | ".join(parts)
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self.output, flush=True)
        self._progress = None


class InfoCallback(TrainerCallback):
    """Prints a training summary at on_train_begin on rank 0: model size, world size, batch sizes,
    effective batch, max steps, devices."""

    def __init__(self, output: TextIO | None = None):
        self._output = output
        self.info: dict[str, Any] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.info = training_summary(args, state, kwargs.get("model"))
        out = self._output if self._output is not None else sys.stdout
        width = max((len(k) for k in self.info), default=0)
        lines = ["training summary:"]
        for key, value in self.info.items():
            shown = value
            if key.endswith("parameters") and isinstance(value, int):
                shown = f"{value:,} ({format_count(value)})"
            lines.append(f"  {key.replace('_', ' ').ljust(width)}  {shown}")
        print("\n".join(lines), file=out, flush=True)
