"""A real training run in the runtime image, writing to the host as the host user."""

from __future__ import annotations

import json
import os

import pytest

from .conftest import OFFLINE_ENV, REPORT, SMALL_MODEL, TINY_LLAMA, fgl, fgl_env

pytestmark = pytest.mark.docker


def test_tiny_llama_trains_and_checkpoints_into_a_host_mount(trained):
    output, done, seconds = trained
    REPORT.add(f"docker run: tiny_llama 3 steps (small model) in {seconds:.1f}s")
    assert "training done: step 3/3" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    checkpoint = output / "checkpoints" / "checkpoint-3"
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    assert manifest["step"] == 3
    # format 2: the weights as DCP shards (one process here: one shard) and the model's config
    assert (checkpoint / "model" / ".metadata").is_file()
    assert (checkpoint / "model" / "__0_0.distcp").stat().st_size > 0
    assert (checkpoint / "hf" / "config.json").is_file()
    assert (output / "config.json").is_file()


def test_everything_training_wrote_belongs_to_puid_pgid(trained):
    output, _, _ = trained
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in [output, *output.rglob("*")]}
    assert owners == {(1234, 1234)}


def test_fgl_run_trains_into_the_workspace_as_the_invoking_user(runtime_image, tmp_path):
    """`fgl run` on the local engine: the job runs as the user who ran fgl (PUID/PGID from fgl),
    and its checkpoint lands in the workspace mounted at the same path."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    env = fgl_env(tmp_path / "home", tmp_path / "runs")
    done = fgl(
        env, "run", "--image", runtime_image, "--workspace", str(workspace), *OFFLINE_ENV,
        "--", "forgather", "-p", TINY_LLAMA, "train", "--max-steps", "3",
        "--output-dir", str(workspace / "tiny"), "trainer_args.eval_steps=3",
        "trainer_args.save_steps=3", *SMALL_MODEL, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "training done: step 3/3" in done.stdout
    checkpoint = workspace / "tiny" / "checkpoints" / "checkpoint-3"
    assert json.loads((checkpoint / "manifest.json").read_text())["step"] == 3
    written = [workspace / "tiny", *(workspace / "tiny").rglob("*")]
    assert {(p.stat().st_uid, p.stat().st_gid) for p in written} == {(os.getuid(), os.getgid())}
