"""fgl installs on its own and runs without torch or the forgather package."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "launcher"
FORBIDDEN = {"torch", "forgather"}


# ---------------------------------------------------------------- in-process, fast


@pytest.mark.unit
def test_version_option_in_process():
    from fgl import __version__
    from fgl.cli import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"fgl {__version__}" == "fgl 0.1.0"


@pytest.mark.unit
@pytest.mark.parametrize("engine", [None, "27.3.1"])
def test_version_command_reports_engine_only_when_reachable(monkeypatch, engine):
    import fgl.cli
    from typer.testing import CliRunner

    monkeypatch.setattr(fgl.cli, "docker_engine_version", lambda timeout=3.0: engine)
    result = CliRunner().invoke(fgl.cli.app, ["version"])
    assert result.exit_code == 0, result.output
    expected = ["fgl 0.1.0"] + ([f"docker engine {engine}"] if engine else [])
    assert result.output.splitlines() == expected


@pytest.mark.unit
def test_launcher_declares_and_imports_neither_torch_nor_forgather():
    meta = tomllib.loads((LAUNCHER / "pyproject.toml").read_text())["project"]
    assert meta["name"] == "forgather-launcher"
    assert meta["version"] == "0.1.0"
    deps = {re.split(r"[\s<>=!~;\[]", d, maxsplit=1)[0].lower() for d in meta["dependencies"]}
    assert {"typer", "rich", "docker", "paramiko", "pyyaml"} <= deps
    assert not deps & FORBIDDEN

    for source in (LAUNCHER / "fgl").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert not roots & FORBIDDEN, f"{source.name}:{node.lineno} imports {roots}"


# ---------------------------------------------------------------- fresh venv, slow


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.pop("VIRTUAL_ENV", None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="module")
def launcher_venv(tmp_path_factory):
    """A fresh venv with launcher/ pip-installed (non-editable); built once per module."""
    root = tmp_path_factory.mktemp("fgl-venv")
    env_dir = root / "venv"
    run = dict(cwd=root, env=_clean_env(), capture_output=True, text=True)
    made = subprocess.run([sys.executable, "-m", "venv", str(env_dir)], timeout=300, **run)
    assert made.returncode == 0, made.stderr
    bindir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    # Build from a clean copy: no stale launcher/build/ in the wheel, nothing written to the tree.
    source = root / "launcher"
    shutil.copytree(
        LAUNCHER, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    installed = subprocess.run(
        [str(bindir / "python"), "-m", "pip", "install", "--quiet", str(source)],
        timeout=900,
        **run,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return bindir, root


def _run(launcher_venv, *argv: str) -> subprocess.CompletedProcess[str]:
    bindir, cwd = launcher_venv
    exe = bindir / argv[0]
    return subprocess.run(
        [str(exe), *argv[1:]],
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_installed_fgl_version(launcher_venv):
    result = _run(launcher_venv, "fgl", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "fgl 0.1.0"


@pytest.mark.slow
def test_installed_fgl_help(launcher_venv):
    result = _run(launcher_venv, "fgl", "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout.lower()
    assert "rendezvous" in text or "nodes" in text


@pytest.mark.slow
def test_installed_fgl_version_command(launcher_venv):
    result = _run(launcher_venv, "fgl", "version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "fgl 0.1.0"


@pytest.mark.slow
@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_venv_has_no_torch_nor_forgather(launcher_venv, package):
    result = _run(launcher_venv, "python", "-c", f"import {package}")
    assert result.returncode != 0, f"{package} is importable in the fgl-only venv"
    assert "ModuleNotFoundError" in result.stderr


@pytest.mark.slow
def test_importing_fgl_does_not_import_torch(launcher_venv):
    check = "import fgl, sys; assert 'torch' not in sys.modules"
    assert _run(launcher_venv, "python", "-c", check).returncode == 0
    check_cli = "import fgl.cli, sys; assert not {'torch', 'forgather'} & set(sys.modules)"
    result = _run(launcher_venv, "python", "-c", check_cli)
    assert result.returncode == 0, result.stderr
