"""Two processes (gloo, torchrun) training on a stream: bit-exact resume after kill -9 with 0 and 2
dataloader workers per rank, and a clear refusal to continue a stream on another world size."""

from __future__ import annotations

import shutil

import pytest

from tests.unit.train._tiny import RESUME_ARGS, launch, write_progression_stream
from tests.unit.train.test_stream_resume import straight_kill_resume

pytestmark = pytest.mark.dist

# 2 ranks x 2 per device x accumulation 2: the global batch of the one-process tests
DDP = {**RESUME_ARGS, "per_device_train_batch_size": 2}


@pytest.mark.parametrize("workers", [0, 2])
def test_two_process_kill_9_then_resume_on_a_stream_is_bit_exact(tmp_path, workers):
    straight_kill_resume(tmp_path, {**DDP, "dataloader_num_workers": workers}, nproc=2)
    if workers == 0:  # the same checkpoint cannot continue on one process: each rank had its part
        out = tmp_path / "one"
        shutil.copytree(tmp_path / "b" / "checkpoints", out / "checkpoints")
        args = {**RESUME_ARGS, "output_dir": str(out), "resume_from_checkpoint": True}
        process = launch(
            args, tmp_path / "one.jsonl", stream=write_progression_stream(tmp_path / "d")
        )
        output, _ = process.communicate(timeout=300)
        assert process.returncode != 0
        assert (
            "streaming data resumes only with the same data-parallel ranks: the checkpoint has 2, "
            "this run 1" in output
        ), output[-3000:]
