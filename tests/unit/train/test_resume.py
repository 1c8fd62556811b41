"""Exact resume after `kill -9`: after a checkpoint, and in the middle of writing one."""

from __future__ import annotations

import pytest

from forgather.ml.train.checkpoint import STALL_ENV, latest_checkpoint, list_checkpoints
from forgather.ml.train.run_lock import machine_key
from tests.unit.train._tiny import RESUME_ARGS, kill_when, launch, read_records, run, step_records

pytestmark = [pytest.mark.unit, pytest.mark.slow]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Per-step records of an uninterrupted 12-step run (which also checkpoints every 4 steps)."""
    root = tmp_path_factory.mktemp("straight")
    run({**RESUME_ARGS, "output_dir": str(root / "out")}, root / "log.jsonl")
    records = read_records(root / "log.jsonl")
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 13))
    return records


def assert_identical_after(straight, resumed, step):
    """Every record (loss, grad_norm, learning_rate, tokens, eval) after `step` is bit-identical."""
    keys = ("loss", "grad_norm", "learning_rate", "epoch", "tokens", "eval_loss")
    expected = [
        {k: r[k] for k in keys if k in r} | {"step": r["step"]}
        for r in straight
        if r["step"] > step and "train_runtime" not in r
    ]
    got = [
        {k: r[k] for k in keys if k in r} | {"step": r["step"]}
        for r in resumed
        if "train_runtime" not in r
    ]
    assert got == expected


def test_kill_9_after_a_checkpoint_then_resume_is_bit_exact(straight, tmp_path):
    args = {**RESUME_ARGS, "output_dir": str(tmp_path / "out")}
    hanging = tmp_path / "out" / "hanging"
    process = launch(args, tmp_path / "killed.jsonl", hang_after_save=8)
    kill_when(process, hanging.exists)
    assert latest_checkpoint(tmp_path / "out").name == "checkpoint-8"
    assert max(step_records(tmp_path / "killed.jsonl")) == 8

    run({**args, "resume_from_checkpoint": True}, tmp_path / "resumed.jsonl")
    assert_identical_after(straight, read_records(tmp_path / "resumed.jsonl"), 8)
    assert [p.name for p in list_checkpoints(tmp_path / "out")] == [
        "checkpoint-4",
        "checkpoint-8",
        "checkpoint-12",
    ]


def test_kill_9_during_a_checkpoint_write_keeps_the_previous_one(straight, tmp_path):
    args = {**RESUME_ARGS, "output_dir": str(tmp_path / "out")}
    root = tmp_path / "out" / "checkpoints"

    def half_written():
        return any((p / "model" / ".metadata").exists() for p in root.glob(".tmp-checkpoint-8-*"))

    process = launch(args, tmp_path / "killed.jsonl", env={STALL_ENV: "8"})
    kill_when(process, half_written)
    [temp] = root.glob(".tmp-checkpoint-8-*")
    assert temp.name == f".tmp-checkpoint-8-{machine_key()}-{process.pid}"  # writer's machine, pid
    assert not (temp / "manifest.json").exists()
    assert [p.name for p in list_checkpoints(tmp_path / "out")] == ["checkpoint-4"]
    assert not (root / "checkpoint-8").exists()

    run({**args, "resume_from_checkpoint": "latest"}, tmp_path / "resumed.jsonl")
    assert_identical_after(straight, read_records(tmp_path / "resumed.jsonl"), 4)
    assert not temp.exists()  # the dead writer's leftover is cleaned
    assert [p.name for p in list_checkpoints(tmp_path / "out")] == [
        "checkpoint-4",
        "checkpoint-8",
        "checkpoint-12",
    ]
