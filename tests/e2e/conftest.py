"""End-to-end fixtures: the real `forgather` CLI in subprocesses, on a shrunken tiny_llama.

Every run is offline, writes into tmp dirs, and shares one session cache (`XDG_CACHE_HOME`: the
trained tokenizer, the `datasets` cache, transformers' remote-code modules), so only the first run
trains the tokenizer and tokenizes the corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.remote_venv import remote_venv  # noqa: F401 (the clean venv fixture)

REPO = Path(__file__).resolve().parents[2]
PROJECT = REPO / "examples" / "tiny_experiments" / "tiny_llama"

# ~0.37M parameters instead of ~4.5M: two layers of width 64.
SMALL_MODEL = [
    "+model.hidden_size=64",
    "+model.intermediate_size=192",
    "+model.num_hidden_layers=2",
]
SMALL = [*SMALL_MODEL, "trainer_args.per_device_train_batch_size=8"]

TIMEOUT = 300


@dataclass
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def lines(self, stream: str = "stdout") -> list[str]:
        """Lines of a stream, progress-bar redraws (`\\r`) split too."""
        return [line for line in re.split(r"[\r\n]+", getattr(self, stream)) if line.strip()]

    def describe(self) -> str:
        return (
            f"$ {' '.join(self.args)}\nexit {self.returncode}\n"
            f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}"
        )


@pytest.fixture(scope="session")
def e2e_env(tmp_path_factory) -> dict[str, str]:
    """The environment of every subprocess: offline, caches in one session tmp dir."""
    env = dict(os.environ)
    env.update(
        HF_DATASETS_OFFLINE="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        XDG_CACHE_HOME=str(tmp_path_factory.mktemp("xdg_cache")),
        # Trainer-control discovery files, removed when a job ends.
        FORGATHER_JOBS_DIR=str(tmp_path_factory.mktemp("jobs")),
        PYTHONUNBUFFERED="1",
    )
    for name in ("HF_HOME", "HF_DATASETS_CACHE", "HF_MODULES_CACHE", "TORCHELASTIC_RUN_ID"):
        env.pop(name, None)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="session")
def forgather(e2e_env):
    """`forgather(*args)` runs `python -m forgather.cli.main *args` with stdin closed."""

    def run(*args: str, cwd: Path | None = None, timeout: int = TIMEOUT) -> Run:
        command = [sys.executable, "-m", "forgather.cli.main", *map(str, args)]
        done = subprocess.run(
            command,
            cwd=cwd or REPO,
            env=e2e_env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Run(command, done.returncode, done.stdout, done.stderr)

    return run


@pytest.fixture(scope="session")
def train(forgather):
    """`train(output_dir, *extra)`: `forgather -p tiny_llama train --output-dir DIR` on the small model."""

    def run(output_dir: Path, *extra: str, small: list[str] = SMALL) -> Run:
        return forgather("-p", PROJECT, "train", "--output-dir", output_dir, *small, *extra)

    return run


@pytest.fixture(scope="session")
def trained(tmp_path_factory, train) -> tuple[Path, Run]:
    """One 40-step run (evals and checkpoints at 20 and 40), shared by the tests that need a model."""
    output_dir = tmp_path_factory.mktemp("trained") / "tiny"
    run = train(
        output_dir,
        "--max-steps",
        "40",
        "trainer_args.eval_steps=20",
        "trainer_args.save_steps=20",
        "trainer_args.logging_steps=10",
    )
    assert run.returncode == 0, run.describe()
    return output_dir, run


def run_dirs(output_dir: Path) -> list[Path]:
    return sorted(p for p in (output_dir / "runs").iterdir() if p.is_dir())


def read_logs(run_dir: Path) -> list[dict]:
    text = (run_dir / "trainer_logs.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def tree_digest(root: Path) -> dict[str, str]:
    """`{relative path: sha256}` of every file below `root`."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def assert_one_line_error(run: Run, *needles: str) -> str:
    """Exit 1, exactly one `error:` line on stderr (the last line), no traceback; returns it."""
    assert run.returncode == 1, run.describe()
    assert "Traceback" not in run.stderr, run.describe()
    lines = run.lines("stderr")
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, run.describe()
    assert lines[-1] == errors[0], run.describe()
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    return errors[0]
