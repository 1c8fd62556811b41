"""JsonLinesLogger, TensorBoardLogger and RunInfoWriter: what they write and that it stays readable."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from forgather.ml.train.callbacks.logging import (
    JsonLinesLogger,
    RunInfoWriter,
    TensorBoardLogger,
    scalar_tag,
)
from forgather.ml.train.state import TrainerControl

from .conftest import make_args, make_state

pytestmark = pytest.mark.unit


def read_jsonl(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


CRASHING_WRITER = textwrap.dedent(
    """
    import sys
    from types import SimpleNamespace
    from forgather.ml.train.callbacks.logging import JsonLinesLogger
    from forgather.ml.train.state import TrainerControl, TrainerState

    logger = JsonLinesLogger(sys.argv[1])
    state, control = TrainerState(max_steps=10**9), TrainerControl()
    args = SimpleNamespace(logging_dir=None, output_dir=None)
    logger.on_train_begin(args, state, control)
    step = 0
    while True:
        step += 1
        state.global_step = step
        # some records are bigger than the file buffer
        text = "x" * (100_000 if step % 7 == 0 else 50)
        logger.on_log(args, state, control, logs={"loss": 1.0 / step, "note": text})
    """
)


def test_jsonl_every_line_parses_after_the_writer_is_killed_mid_run_and_resume_appends(tmp_path):
    path = tmp_path / "logs" / "trainer_logs.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_WRITER, str(path)])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if path.exists() and path.stat().st_size > 2_000_000:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the writer did not write")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    raw = path.read_bytes()
    if not raw.endswith(b"\n"):  # killed mid-line: only the last line may be cut
        raw = raw[: raw.rfind(b"\n") + 1]
    records = [json.loads(line) for line in raw.decode().splitlines()]
    assert len(records) > 10
    assert [r["global_step"] for r in records] == list(range(1, len(records) + 1))
    assert all({"timestamp", "global_step", "epoch", "loss"} <= r.keys() for r in records)

    # A resumed run appends (cutting a partial last line, if any): the whole file parses.
    logger = JsonLinesLogger(path)
    state, control = make_state(global_step=len(records)), TrainerControl()
    logger.on_train_begin(make_args(tmp_path), state, control)
    state.global_step += 1
    logger.on_log(None, state, control, logs={"loss": 0.5})
    logger.on_train_end(None, state, control)
    resumed = read_jsonl(path)
    assert len(resumed) == len(records) + 1
    assert resumed[-1]["global_step"] == len(records) + 1


def test_jsonl_resume_cuts_a_partial_last_line_then_appends(tmp_path, control):
    path = tmp_path / "trainer_logs.jsonl"
    path.write_text('{"global_step": 1}\n{"global_step": 2}\n{"global_step": 3, "lo')
    logger = JsonLinesLogger(path)
    state = make_state(global_step=2)
    logger.on_train_begin(make_args(tmp_path), state, control)
    state.global_step = 3
    logger.on_log(None, state, control, logs={"loss": 1.5})
    assert [r["global_step"] for r in read_jsonl(path)] == [1, 2, 3]


def test_jsonl_defaults_to_logging_dir_and_writes_fields_once_per_eval(tmp_path, control):
    args = make_args(tmp_path)
    logger = JsonLinesLogger()
    state = make_state()
    logger.on_train_begin(args, state, control)
    state.global_step, state.epoch = 10, 0.25
    logger.on_log(args, state, control, logs={"loss": 0.0, "grad_norm": float("nan")})
    eval_metrics = {"eval_loss": 2.0, "eval_perplexity": math.exp(2.0)}
    logger.on_log(args, state, control, logs=dict(eval_metrics))  # the trainer logs eval ...
    logger.on_evaluate(args, state, control, metrics=dict(eval_metrics))  # ... then reports it
    logger.on_train_end(args, state, control)
    records = read_jsonl(Path(args.logging_dir) / "trainer_logs.jsonl")
    assert len(records) == 2
    train, evaluation = records
    assert train["global_step"] == 10 and train["epoch"] == 0.25
    assert train["loss"] == 0.0  # zero kept
    assert train["grad_norm"] == "nan"  # strict JSON
    assert "timestamp" in train
    assert evaluation["eval_loss"] == 2.0


def test_jsonl_writes_nothing_on_other_ranks(tmp_path, control):
    args = make_args(tmp_path)
    logger = JsonLinesLogger()
    state = make_state(is_world_process_zero=False, rank=1)
    logger.on_train_begin(args, state, control)
    logger.on_log(args, state, control, logs={"loss": 1.0})
    logger.on_train_end(args, state, control)
    assert not Path(args.logging_dir).exists()


def test_jsonl_records_text_samples_from_log_history(tmp_path, control):
    args = make_args(tmp_path)
    logger = JsonLinesLogger()
    state = make_state()
    logger.on_train_begin(args, state, control)
    state.global_step = 5
    state.log_history.append({"samples": [{"prompt": "a", "text": "b"}], "step": 5})
    logger.on_evaluate(args, state, control, metrics={"eval_loss": 1.0})
    logger.on_log(args, state, control, logs={"loss": 1.0})
    logger.on_train_end(args, state, control)
    records = read_jsonl(Path(args.logging_dir) / "trainer_logs.jsonl")
    samples = [r for r in records if "samples" in r]
    assert len(samples) == 1
    assert samples[0]["samples"] == [{"prompt": "a", "text": "b"}]
    assert samples[0]["global_step"] == 5


# ---- TensorBoard ----


def read_events(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(acc, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tensorboard_file_holds_scalars_zeros_included_and_text(tmp_path, control):
    args = make_args(tmp_path)
    tb = TensorBoardLogger(config_text="main:\n    lr: 0.1\n")
    state = make_state()
    tb.on_train_begin(args, state, control)
    state.global_step = 1
    tb.on_log(args, state, control, logs={"loss": 3.5, "learning_rate": 0.0, "grad_norm": 0.0})
    state.global_step = 2
    logs = {"loss": 0.0, "learning_rate": 1e-3, "grad_norm": 0.5, "tokens_per_second": 1234.0}
    logs["mfu"] = 0.0
    tb.on_log(args, state, control, logs=logs)
    tb.on_log(args, state, control, logs={"eval_loss": 2.0})
    tb.on_evaluate(args, state, control, metrics={"eval_loss": 2.0})  # not written twice
    state.log_history.append({"samples": [{"prompt": "the", "text": " cat"}], "step": 2})
    tb.on_train_end(args, state, control)

    acc = read_events(Path(args.logging_dir))
    tags = acc.Tags()["scalars"]
    for tag in ("train/loss", "train/learning_rate", "train/grad_norm", "eval/loss"):
        assert tag in tags
    assert scalars(acc, "train/loss") == [(1, 3.5), (2, 0.0)]
    assert scalars(acc, "train/learning_rate") == [(1, 0.0), (2, pytest.approx(1e-3))]
    assert scalars(acc, "train/grad_norm") == [(1, 0.0), (2, 0.5)]
    assert scalars(acc, "perf/tokens_per_second") == [(2, 1234.0)]
    assert scalars(acc, "perf/mfu") == [(2, 0.0)]
    assert scalars(acc, "eval/loss") == [(2, 2.0)]
    assert scalars(acc, "eval/perplexity") == [(2, pytest.approx(math.exp(2.0), rel=1e-6))]
    text_tags = acc.Tags()["tensors"]
    assert any(t.startswith("config") for t in text_tags)
    assert any(t.startswith("training_info") for t in text_tags)
    assert any(t.startswith("samples") for t in text_tags)
    config_tag = next(t for t in text_tags if t.startswith("config"))
    assert b"lr: 0.1" in acc.Tensors(config_tag)[0].tensor_proto.string_val[0]


def test_scalar_tags_group_by_kind():
    assert scalar_tag("loss") == "train/loss"
    assert scalar_tag("eval_perplexity") == "eval/perplexity"
    assert scalar_tag("mfu") == "perf/mfu"
    assert scalar_tag("memory_peak_allocated_gb") == "memory/peak_allocated_gb"


def test_run_info_writer_writes_config_and_provenance(tmp_path, control):
    args = make_args(tmp_path)
    writer = RunInfoWriter(config_text="a: 1", provenance={"git_sha": None, "argv": ["x"]})
    writer.on_train_begin(args, make_state(), control)
    directory = Path(args.logging_dir)
    assert (directory / "config.yaml").read_text() == "a: 1\n"
    assert json.loads((directory / "provenance.json").read_text()) == {
        "argv": ["x"],
        "git_sha": None,
    }
    RunInfoWriter().on_train_begin(make_args(tmp_path / "b"), make_state(), control)
    assert not (tmp_path / "b" / "out").exists()
