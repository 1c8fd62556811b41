"""Trainer control under torch.distributed (2 processes, gloo): every rank acts on the same step."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.dist

FLAGS = ("should_save", "should_training_stop", "should_abort_without_save")
JOB_ID = "dist-abcdef"


def _worker(rank: int, world_size: int, init_file: str, out_dir: str, jobs_dir: str) -> None:
    import torch.distributed as dist

    from forgather.ml.train.callbacks.control import TrainerControlCallback
    from forgather.ml.train.state import TrainerControl, TrainerState

    os.environ["FORGATHER_JOBS_DIR"] = jobs_dir
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    args = SimpleNamespace(output_dir=out_dir)
    state = TrainerState(
        max_steps=10**6, is_world_process_zero=rank == 0, rank=rank, world_size=world_size
    )
    control = TrainerControl()
    callback = TrainerControlCallback(job_id=JOB_ID, announce=False)
    callback.on_train_begin(args, state, control)
    events: list[list] = []
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            state.global_step += 1
            control = callback.on_step_end(args, state, control) or control
            events.extend([flag, state.global_step] for flag in FLAGS if getattr(control, flag))
            if control.should_training_stop:
                break
            control.reset_step_flags()
            time.sleep(0.004 * (1 + 2 * rank))  # ranks run at different speeds
    finally:
        callback.on_train_end(args, state, control)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(events))
        dist.destroy_process_group()


def test_both_ranks_get_each_command_on_the_same_step(tmp_path):
    import torch.multiprocessing as mp

    from forgather.ml.train.control import ControlClient, ControlError, find_job

    jobs_dir = tmp_path / "jobs"
    context = mp.spawn(
        _worker,
        args=(2, str(tmp_path / "init"), str(tmp_path), str(jobs_dir)),
        nprocs=2,
        join=False,
    )
    try:
        deadline = time.monotonic() + 90
        info = None
        while info is None and time.monotonic() < deadline:
            try:
                info = find_job("dist", directory=jobs_dir)
            except ControlError:
                time.sleep(0.05)
        assert info is not None, "rank 0 did not publish its control endpoint"
        client = ControlClient(info)
        client.send("save")
        while "last_command" not in client.status():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        client.send("save-stop")
        while not context.join(timeout=1):
            assert time.monotonic() < deadline + 30, "the ranks did not stop"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0 == rank1  # same flags on the same steps
    saves = [step for flag, step in rank0 if flag == "should_save"]
    stops = [step for flag, step in rank0 if flag == "should_training_stop"]
    assert len(saves) == 2 and len(stops) == 1
    assert stops[0] == saves[1] > saves[0]
    assert not any(flag == "should_abort_without_save" for flag, _ in rank0)
    assert not (jobs_dir / f"{JOB_ID}.json").exists()
