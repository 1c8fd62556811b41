"""`examples/tiny_experiments/parallel`: every strategy's config trains, evaluates, saves and
samples through `forgather train --nproc N`, as a user runs it (a smaller model, a few steps)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .conftest import SMALL_MODEL

pytestmark = [pytest.mark.slow, pytest.mark.dist]

# the Hugging Face model's size lives in its config object
SMALL_SIZES = {
    "pipeline_hf.yaml": [
        "model.config.hidden_size=64",
        "model.config.intermediate_size=192",
        "model.config.num_hidden_layers=2",
    ]
}

PROJECT = Path(__file__).resolve().parents[2] / "examples" / "tiny_experiments" / "parallel"


@pytest.mark.parametrize(
    ("config", "nproc"),
    [
        ("ddp.yaml", 2),
        ("fsdp.yaml", 2),
        ("hsdp.yaml", 4),
        ("pipeline.yaml", 2),
        ("pipeline_fsdp.yaml", 4),
        ("diloco.yaml", 2),
        ("pipeline_hf.yaml", 2),
    ],
)
def test_each_strategy_config_runs_end_to_end(forgather, tmp_path, config, nproc):
    output_dir = tmp_path / "out"
    run = forgather(
        "-p", PROJECT, "-t", config, "train", "--nproc", str(nproc), "--max-steps", "4",
        "--output-dir", output_dir, *SMALL_SIZES.get(config, SMALL_MODEL), "trainer_args.eval_steps=4",
        "trainer_args.save_steps=4", "trainer_args.logging_steps=2",
    )  # fmt: skip
    assert run.returncode == 0, run.describe()
    strategy = {"hsdp": "fsdp", "pipeline_fsdp": "pipeline", "pipeline_hf": "pipeline"}.get(
        config.removesuffix(".yaml"), config.removesuffix(".yaml")
    )
    assert re.search(rf"^\s*parallelism\s+{strategy}\b", run.stdout, re.MULTILINE), run.stdout
    if config == "pipeline_hf.yaml":  # not a forgather model: torch's tracer cut it
        assert "2 stages cut by torch's tracer" in run.stdout
    assert re.search(r"^validation loss \d+\.\d+ nats/token", run.stdout, re.MULTILINE)
    assert "--- sample ---" in run.stdout  # the whole model, gathered to rank 0 if it was split
    manifest = json.loads(
        (output_dir / "checkpoints" / "checkpoint-4" / "manifest.json").read_text()
    )
    assert (manifest["parallelism"], manifest["world_size"]) == (strategy, nproc)
    assert (output_dir / "model.safetensors").is_file() and (output_dir / "config.json").is_file()
