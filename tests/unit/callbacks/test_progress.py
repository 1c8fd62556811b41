"""ProgressCallback and InfoCallback output."""

from __future__ import annotations

import io
import re

import pytest
import torch

from forgather.ml.train.callbacks.progress import (
    InfoCallback,
    ProgressCallback,
    format_duration,
)
from forgather.ml.train.state import TrainerControl

from .conftest import make_args, make_state

pytestmark = pytest.mark.unit

LINE = re.compile(
    r"^step (\d+)/1000 \| loss [\d.]+ \| lr \d\.\de-\d\d \| grad [\d.]+ \| [\d.]+[kMGT]? tok/s \| eta \S+$"
)


def run_steps(callback, args, state, control, steps, log_every=10, tokens_per_step=1000):
    for _ in range(steps):
        state.global_step += 1
        state.num_input_tokens_seen += tokens_per_step
        callback.on_step_end(args, state, control)
        if state.global_step % log_every == 0:
            logs = {"loss": 3.21, "learning_rate": 1e-3, "grad_norm": 0.84, "epoch": 0.1}
            callback.on_log(args, state, control, logs=logs)


def test_progress_prints_plain_lines_without_a_tty(tmp_path):
    out = io.StringIO()  # not a TTY
    callback = ProgressCallback(output=out)
    args, state, control = make_args(tmp_path), make_state(), TrainerControl()
    callback.on_train_begin(args, state, control)
    run_steps(callback, args, state, control, 30)
    callback.on_log(args, state, control, logs={"eval_loss": 2.5, "eval_perplexity": 12.18})
    callback.on_evaluate(args, state, control, metrics={"eval_loss": 2.5, "eval_perplexity": 12.18})
    callback.on_log(args, state, control, logs={"train_runtime": 1.0, "train_loss": 3.0})
    callback.on_train_end(args, state, control)
    lines = out.getvalue().splitlines()
    assert "\x1b[" not in out.getvalue()  # no terminal control codes
    train_lines = [line for line in lines if line.startswith("step ")]
    assert len(train_lines) == 3
    for line in train_lines:
        assert LINE.match(line), line
    assert train_lines[0].startswith("step 10/1000 | loss 3.21 | lr 1.0e-03 | grad 0.84 | ")
    eval_lines = [line for line in lines if line.startswith("eval ")]
    assert eval_lines == ["eval step 30 | loss 2.5 | perplexity 12.18"]  # once, not twice
    assert lines[-1].startswith("training done: step 30/1000 | time ")
    assert "train loss 3" in lines[-1] and "eval loss 2.5" in lines[-1]


def test_progress_uses_tokens_per_second_from_the_record(tmp_path):
    out = io.StringIO()
    callback = ProgressCallback(output=out, use_rich=False)
    args, state, control = make_args(tmp_path), make_state(global_step=119), TrainerControl()
    callback.on_train_begin(args, state, control)
    state.global_step = 120
    logs = {"loss": 3.21, "learning_rate": 1e-3, "grad_norm": 0.84, "tokens_per_second": 12345.0}
    logs["mfu"] = 0.412
    callback.on_log(args, state, control, logs=logs)
    line = out.getvalue().splitlines()[0]
    assert line.startswith("step 120/1000 | loss 3.21 | lr 1.0e-03 | grad 0.84 | 12.3k tok/s")
    assert "mfu 41.2%" in line and "| eta " in line


def test_progress_is_silent_on_other_ranks(tmp_path):
    out = io.StringIO()
    callback = ProgressCallback(output=out)
    args, control = make_args(tmp_path), TrainerControl()
    state = make_state(is_world_process_zero=False, rank=1)
    callback.on_train_begin(args, state, control)
    run_steps(callback, args, state, control, 20)
    callback.on_train_end(args, state, control)
    assert out.getvalue() == ""


def test_progress_rich_bar_runs_and_ends_with_a_summary(tmp_path):
    out = io.StringIO()
    callback = ProgressCallback(output=out, use_rich=True)
    args, state, control = make_args(tmp_path), make_state(max_steps=20), TrainerControl()
    callback.on_train_begin(args, state, control)
    run_steps(callback, args, state, control, 20)
    callback.on_evaluate(args, state, control, metrics={"eval_loss": 2.5})
    callback.on_train_end(args, state, control)
    text = out.getvalue()
    assert "20/20" in text
    assert "eval step 20 | loss 2.5" in text
    assert "training done: step 20/20" in text


def test_format_duration():
    assert format_duration(9.4) == "9s"
    assert format_duration(130) == "2m10s"
    assert format_duration(3725) == "1h02m"
    assert format_duration(None) == "?"


def test_info_callback_prints_a_training_summary(tmp_path):
    out = io.StringIO()
    model = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.Linear(20, 5))
    args = make_args(tmp_path)
    state = make_state(world_size=2, effective_batch_size=16, train_batch_size=4)
    callback = InfoCallback(output=out)
    callback.on_train_begin(args, state, TrainerControl(), model=model)
    text = out.getvalue()
    assert text.startswith("training summary:")
    assert "parameters" in text and "325" in text  # 10*20+20 + 20*5+5
    assert callback.info["parameters"] == 325
    assert callback.info["world_size"] == 2
    assert callback.info["per_device_batch_size"] == 4
    assert callback.info["gradient_accumulation_steps"] == 2
    assert callback.info["effective_batch_size"] == 16
    assert callback.info["max_steps"] == 1000
    assert callback.info["device"] == "cpu"
