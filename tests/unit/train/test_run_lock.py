"""One run per output directory: a second run on the same output_dir is refused with one line
naming the run in the way, without touching its checkpoints; once that run is gone (even by
kill -9) the directory is free again and the leftovers of its interrupted writes are cleaned."""

from __future__ import annotations

import socket

import pytest

from forgather.ml.train.checkpoint import latest_checkpoint
from forgather.ml.train.run_lock import OutputDirInUse, RunLock
from tests.unit.train._tiny import RESUME_ARGS, kill_when, launch, run


def test_a_second_run_on_the_same_output_dir_is_refused_until_the_first_ends(tmp_path):
    out = tmp_path / "out"
    args = {**RESUME_ARGS, "output_dir": str(out)}
    first = launch(args, tmp_path / "first.jsonl", hang_after_save=4)
    try:
        import time

        deadline = time.monotonic() + 120
        while not (out / "hanging").exists():
            assert first.poll() is None, first.stdout.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        before = sorted(p.name for p in (out / "checkpoints").iterdir())
        second = launch({**args, "resume_from_checkpoint": True}, tmp_path / "second.jsonl")
        output, _ = second.communicate(timeout=120)
        assert second.returncode != 0
        line = next(x for x in output.splitlines() if "is in use by" in x)
        assert f"is in use by pid {first.pid} on host {socket.gethostname()} since " in line
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before  # untouched
        # a leftover of an interrupted write by the first run
        (out / "checkpoints" / f".tmp-checkpoint-999-{first.pid}").mkdir()
    finally:
        kill_when(first, lambda: True)
    assert latest_checkpoint(out).name == "checkpoint-4"
    run({**args, "resume_from_checkpoint": True}, tmp_path / "resumed.jsonl")  # free again
    assert not (out / "checkpoints" / f".tmp-checkpoint-999-{first.pid}").exists()


def test_the_lock_names_its_holder_and_is_released(tmp_path):
    first, second = RunLock(tmp_path), RunLock(tmp_path)
    assert first.acquire() is None and first.held
    with pytest.raises(OutputDirInUse, match=rf"in use by pid \d+ on host {socket.gethostname()}"):
        second.acquire()
    first.release()
    assert second.acquire() is None
    second.release()
