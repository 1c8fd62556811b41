"""Shared fixtures of the fgl unit tests: an isolated runs dir and a CLI runner."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner


@pytest.fixture(autouse=True)
def runs_dir(tmp_path, monkeypatch):
    """Every test records runs under its own tmp dir."""
    path = tmp_path / "runs"
    monkeypatch.setenv("FGL_RUNS_DIR", str(path))
    return path


@pytest.fixture
def fgl():
    """Invoke the fgl CLI in-process; returns click's Result."""
    from fgl.cli import app

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, list(args))

    return invoke
