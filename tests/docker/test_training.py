"""A real training run in the runtime image, writing to the host as the host user."""

from __future__ import annotations

import json

import pytest

from .conftest import REPORT

pytestmark = pytest.mark.docker


def test_tiny_llama_trains_and_checkpoints_into_a_host_mount(trained):
    output, done, seconds = trained
    REPORT.add(f"docker run: tiny_llama 3 steps (small model) in {seconds:.1f}s")
    assert "training done: step 3/3" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    checkpoint = output / "checkpoints" / "checkpoint-3"
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    assert manifest["step"] == 3
    assert (checkpoint / "model.safetensors").stat().st_size > 0
    assert (output / "config.json").is_file()


def test_everything_training_wrote_belongs_to_puid_pgid(trained):
    output, _, _ = trained
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in [output, *output.rglob("*")]}
    assert owners == {(1234, 1234)}
