"""Log writers: JSON lines, TensorBoard scalars and text, and the run's config and provenance."""

from __future__ import annotations

import contextlib
import json
import math
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from forgather.ml.train.callbacks.base import TrainerCallback
from forgather.ml.train.callbacks.eval_records import EvalDedupe, is_eval_record
from forgather.ml.train.callbacks.progress import training_summary

JSONL_NAME = "trainer_logs.jsonl"


def logging_dir(args: Any) -> Path:
    """`args.logging_dir`, else `<args.output_dir>/logs`, else `./logs`."""
    directory = getattr(args, "logging_dir", None)
    if directory:
        return Path(directory)
    output_dir = getattr(args, "output_dir", None)
    return Path(output_dir) / "logs" if output_dir else Path("logs")


def read_jsonl_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a `trainer_logs.jsonl` (a partial last line, from a crash, is skipped)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def find_jsonl_logs(root: str | os.PathLike) -> list[Path]:
    """Every `trainer_logs.jsonl` under `root` (a run's output directory, or one of its runs)."""
    root = Path(root)
    return sorted(root.rglob(JSONL_NAME)) if root.is_dir() else [root]


def to_jsonable(value: Any) -> Any:
    """Tensors and numpy scalars as numbers, NaN/inf as the strings "nan"/"inf"/"-inf" (strict JSON)."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        with contextlib.suppress(TypeError, ValueError, RuntimeError):
            value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if hasattr(value, "tolist"):
        return to_jsonable(value.tolist())
    return str(value)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class _SampleTracker:
    """Finds text-sample records (`{"samples": [...], "step": N}`) appended to state.log_history
    since the last look, or passed to on_log; each is handed out once."""

    def __init__(self) -> None:
        self.index = 0
        self.keys: set[tuple[int, str]] = set()

    def start(self, state: Any) -> None:
        self.index = len(state.log_history)

    def _fresh(self, record: dict[str, Any], state: Any) -> tuple[dict[str, Any], int] | None:
        step = int(record.get("step", record.get("global_step", state.global_step)))
        key = (step, json.dumps(to_jsonable(record.get("samples")), sort_keys=True))
        if key in self.keys:
            return None
        self.keys.add(key)
        return record, step

    def new(
        self, state: Any, logs: dict[str, Any] | None = None
    ) -> list[tuple[dict[str, Any], int]]:
        history = state.log_history
        candidates = history[min(self.index, len(history)) :]
        self.index = len(history)
        if logs is not None and "samples" in logs:
            candidates = [*candidates, logs]
        found = []
        for record in candidates:
            if isinstance(record, dict) and "samples" in record:
                fresh = self._fresh(record, state)
                if fresh is not None:
                    found.append(fresh)
        return found


def _truncate_partial_line(path: Path) -> None:
    """Cut a last line without newline (left by a crash mid-write) so that appending stays valid."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return
    with open(path, "rb+") as handle:
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        block = 1 << 16
        position = size
        while position > 0:
            start = max(0, position - block)
            handle.seek(start)
            chunk = handle.read(position - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                handle.truncate(start + newline + 1)
                return
            position = start
        handle.truncate(0)


class JsonLinesLogger(TrainerCallback):
    """Appends every log record to `<args.logging_dir>/trainer_logs.jsonl` on rank 0.

    One JSON object per line: `timestamp` (UTC ISO 8601), `global_step`, `epoch` and the record's
    metrics. Each line is written with one write call and flushed, so after a crash every complete line
    parses; a partial last line is cut when a resumed run opens the file (and then appends).
    Evaluation results are written once whether they come through on_log, on_evaluate or both.
    Text samples appended to `state.log_history` by TextSampleCallback become `samples` records.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else None
        self._file: Any = None
        self._dedupe = EvalDedupe()
        self._samples = _SampleTracker()

    def _open(self, args: Any) -> None:
        if self._file is not None:
            return
        if self.path is None:
            self.path = logging_dir(args) / JSONL_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _truncate_partial_line(self.path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)

    def write(self, record: dict[str, Any], state: Any | None = None) -> None:
        """Write one record (a line) now; `state` adds global_step and epoch."""
        if self._file is None:
            raise RuntimeError("JsonLinesLogger is not open (on_train_begin was not called)")
        line: dict[str, Any] = {"timestamp": _now()}
        if state is not None:
            line["global_step"] = state.global_step
            line["epoch"] = state.epoch
        line.update(record)
        self._file.write(json.dumps(to_jsonable(line), allow_nan=False) + "\n")
        self._file.flush()

    def _catch_up_samples(self, state: Any, logs: dict[str, Any] | None = None) -> None:
        for record, step in self._samples.new(state, logs):
            line = {k: v for k, v in record.items() if k not in ("step", "global_step")}
            self.write({"global_step": step, **line}, state)

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self._open(args)
        self._samples.start(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        self._open(args)
        self._catch_up_samples(state, logs)
        if "samples" in logs:
            return
        if is_eval_record(logs) and not self._dedupe.first_time(state.global_step, logs):
            return
        self.write(dict(logs), state)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not state.is_world_process_zero:
            return
        self._open(args)
        if metrics and self._dedupe.first_time(state.global_step, metrics):
            self.write(dict(metrics), state)
        self._catch_up_samples(state)

    def on_step_end(self, args, state, control, **kwargs):
        if self._file is not None and state.is_world_process_zero:
            self._catch_up_samples(state)

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if self._file is not None:
            self._catch_up_samples(state)
            self._file.close()
            self._file = None


# ---- TensorBoard ---------------------------------------------------------------------------

_PERF_KEYS = {
    "tokens_per_second",
    "samples_per_second",
    "steps_per_second",
    "flops_per_second",
    "flops_per_token",
    "mfu",
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
}


def scalar_tag(key: str) -> str:
    """The TensorBoard tag of a log key: eval_loss -> eval/loss, loss -> train/loss, mfu -> perf/mfu."""
    if key.startswith("eval_"):
        return "eval/" + key.removeprefix("eval_")
    if key.startswith("test_"):
        return "test/" + key.removeprefix("test_")
    if key in _PERF_KEYS:
        return "perf/" + key
    if key.startswith("memory_"):
        return "memory/" + key.removeprefix("memory_")
    return "train/" + key


def _scalar(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        try:
            value = value.item()
        except (TypeError, ValueError, RuntimeError):
            return None
    if isinstance(value, int | float):
        return float(value)
    return None


def _markdown_code(text: str) -> str:
    # TensorBoard renders text as markdown: indent by four spaces for a verbatim block.
    return "\n".join("    " + line for line in text.splitlines())


def samples_markdown(samples: list[dict[str, Any]]) -> str:
    parts = []
    for sample in samples:
        prompt = str(sample.get("prompt", ""))
        text = str(sample.get("text", ""))
        parts.append(f"**{prompt}**\n\n{_markdown_code(prompt + text)}")
    return "\n\n---\n\n".join(parts)


class TensorBoardLogger(TrainerCallback):
    """Writes scalars and text to TensorBoard on rank 0 (`torch.utils.tensorboard.SummaryWriter`).

    Every numeric value of every log record is a scalar at `state.global_step` (zeros included):
    `train/loss`, `train/learning_rate`, `train/grad_norm`, `eval/loss`, `eval/perplexity` (computed
    from eval_loss when missing), `perf/tokens_per_second`, `perf/mfu`, `memory/...`.
    Text: `config` (the resolved config, when `config_text` or its alias `pp_config` is given),
    `training_info` (model size, batch sizes, devices) and `samples` (from TextSampleCallback).
    `log_dir` defaults to `args.logging_dir`.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike | None = None,
        config_text: str | None = None,
        pp_config: str | None = None,
        flush_every_log: bool = True,
    ):
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.config_text = config_text if config_text is not None else pp_config
        self.flush_every_log = flush_every_log
        self.writer: Any = None
        self._samples = _SampleTracker()
        self._dedupe = EvalDedupe()

    def _open(self, args: Any) -> Any:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            if self.log_dir is None:
                self.log_dir = logging_dir(args)
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(log_dir=str(self.log_dir))
        return self.writer

    def write_scalars(self, logs: dict[str, Any], step: int) -> None:
        for key, value in logs.items():
            if key in ("epoch", "step", "global_step", "timestamp"):
                continue
            number = _scalar(value)
            if number is None:
                continue
            self.writer.add_scalar(scalar_tag(key), number, step)
        if "eval_loss" in logs and "eval_perplexity" not in logs:
            loss = _scalar(logs["eval_loss"])
            if loss is not None:
                self.writer.add_scalar("eval/perplexity", math.exp(min(loss, 700.0)), step)
        if "epoch" in logs:
            epoch = _scalar(logs["epoch"])
            if epoch is not None:
                self.writer.add_scalar("train/epoch", epoch, step)

    def add_text(self, tag: str, text: str, step: int = 0) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def _catch_up_samples(self, state: Any, logs: dict[str, Any] | None = None) -> None:
        for record, step in self._samples.new(state, logs):
            self.writer.add_text("samples", samples_markdown(record["samples"]), step)

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self._open(args)
        self._samples.start(state)
        if self.config_text:
            self.writer.add_text("config", _markdown_code(self.config_text), state.global_step)
        info = training_summary(args, state, kwargs.get("model"))
        table = "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in info.items())
        self.writer.add_text("training_info", table, state.global_step)
        self.writer.flush()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        self._open(args)
        self._catch_up_samples(state, logs)
        if "samples" not in logs and not (
            is_eval_record(logs) and not self._dedupe.first_time(state.global_step, logs)
        ):
            self.write_scalars(logs, state.global_step)
        if self.flush_every_log:
            self.writer.flush()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not state.is_world_process_zero:
            return
        self._open(args)
        if metrics and self._dedupe.first_time(state.global_step, metrics):
            self.write_scalars(metrics, state.global_step)
        self._catch_up_samples(state)
        self.writer.flush()

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self.writer is None:
            return
        self._catch_up_samples(state)
        self.writer.flush()
        self.writer.close()
        self.writer = None


# ---- run info ---------------------------------------------------------------------------------


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class RunInfoWriter(TrainerCallback):
    """Writes `<logging_dir>/config.yaml` (the resolved config text) and `<logging_dir>/provenance.json`
    at on_train_begin on rank 0, each only when given."""

    def __init__(
        self,
        config_text: str | None = None,
        provenance: dict[str, Any] | None = None,
        log_dir: str | os.PathLike | None = None,
    ):
        self.config_text = config_text
        self.provenance = provenance
        self.log_dir = Path(log_dir) if log_dir is not None else None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        directory = self.log_dir or logging_dir(args)
        if self.config_text is not None:
            text = self.config_text if self.config_text.endswith("\n") else self.config_text + "\n"
            _atomic_write(directory / "config.yaml", text)
        if self.provenance is not None:
            _atomic_write(
                directory / "provenance.json",
                json.dumps(to_jsonable(self.provenance), indent=2, sort_keys=True) + "\n",
            )
