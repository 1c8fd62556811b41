"""The tiny_experiments projects teach what they say: gradient accumulation trains the same (16 x 1,
4 x 4 and 1 x 16 micro-batches log the same per-step losses), the optimizer comparison trains and
plots; real CLI subprocesses."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import REPO, SMALL, SMALL_MODEL, read_logs, run_dirs

pytestmark = pytest.mark.slow

ACCUMULATION = REPO / "examples" / "tiny_experiments" / "gradient_accumulation"


def test_gradient_accumulation_configs_log_the_same_losses(forgather, tmp_path):
    losses = {}
    for config in ("batch16.yaml", "accum4.yaml", "accum16.yaml"):
        output = tmp_path / config
        run = forgather(
            "-p", ACCUMULATION, "-t", config, "train", "--output-dir", output, "--max-steps", "4",
            "trainer_args.logging_steps=1", "trainer_args.save_strategy=no",
            "+main.do_eval=false", "main.sample_prompts=[]", *SMALL_MODEL,
        )  # fmt: skip
        assert run.returncode == 0, (config, run.describe())
        records = [r for d in run_dirs(output) for r in read_logs(d) if "loss" in r]
        losses[config] = [r["loss"] for r in records]
        assert [r["global_step"] for r in records] == [1, 2, 3, 4], config
    for config in ("accum4.yaml", "accum16.yaml"):
        assert losses[config] == pytest.approx(losses["batch16.yaml"], rel=2e-5), config


OPTIMIZERS = REPO / "examples" / "tiny_experiments" / "optimizers"


def test_optimizer_configs_train_and_plot_into_one_png(forgather, tmp_path):
    """Two of the optimizer comparison's configs (a named optimizer with its library block's
    options, and a Multiopt factory) train through the CLI; the plot script draws both curves."""
    outputs = []
    for config in ("apollo.yaml", "multiopt.yaml"):
        output = tmp_path / config.removesuffix(".yaml")
        run = forgather(
            "-p", OPTIMIZERS, "-t", config, "train", "--output-dir", output, "--max-steps", "6",
            "trainer_args.logging_steps=2", "+main.do_eval=false", "main.sample_prompts=[]",
            *SMALL,
        )  # fmt: skip
        assert run.returncode == 0, (config, run.describe())
        records = [r for d in run_dirs(output) for r in read_logs(d) if "loss" in r]
        assert [r["global_step"] for r in records] == [2, 4, 6], config
        outputs.append(output)
    png = tmp_path / "optimizers.png"
    plotted = subprocess.run(
        [sys.executable, OPTIMIZERS / "plot_losses.py", *outputs, "--out", png],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert plotted.returncode == 0, plotted.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [line.split()[0] for line in plotted.stdout.splitlines()[:2]] == ["apollo", "multiopt"]
