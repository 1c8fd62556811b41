"""A virtual environment with only torch, transformers and safetensors (the versions of this
interpreter) and no forgather: where saved model directories must load by their own code.

Cached under ``~/.cache/forgather-tests/`` keyed by those versions (override the root with
``FORGATHER_TEST_CACHE``), so reruns skip the install. Test modules import the ``remote_venv``
fixture from here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors
import torch
import transformers

TORCH_VERSION = torch.__version__.split("+")[0]
REQUIREMENTS = (
    f"torch=={TORCH_VERSION}",
    f"transformers=={transformers.__version__}",
    f"safetensors=={safetensors.__version__}",
)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would put forgather on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.pop("VIRTUAL_ENV", None)
    env.update({"PIP_DISABLE_PIP_VERSION_CHECK": "1", "HF_HUB_OFFLINE": "1"}, **extra)
    return env


def venv_python(env_dir: Path) -> Path:
    return env_dir / ("Scripts" if os.name == "nt" else "bin") / "python"


TORCHAO = "torchao==0.17.0"
"""The torchao that `forgather finalize --quantize` is tested with (not in the dev extras)."""


def build_venv(
    name: str, requirements: tuple[str, ...], work: Path, system_site_packages: bool = False
) -> Path:
    """Python of a venv with `requirements` installed, cached under ~/.cache/forgather-tests by
    its name and requirements (FORGATHER_TEST_CACHE overrides the root)."""
    root = Path(os.environ.get("FORGATHER_TEST_CACHE", Path.home() / ".cache" / "forgather-tests"))
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    key = "-".join([py, *(r.replace("==", "") for r in requirements)])
    env_dir = root / f"{name}-{key}"
    marker = env_dir / ".forgather-complete"
    python = venv_python(env_dir)
    if marker.exists() and python.exists():
        return python
    shutil.rmtree(env_dir, ignore_errors=True)
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    run = dict(cwd=work, env=clean_env(), capture_output=True, text=True)
    command = [sys.executable, "-m", "venv", str(env_dir)]
    if system_site_packages:
        command.insert(3, "--system-site-packages")
    made = subprocess.run(command, timeout=300, **run)
    assert made.returncode == 0, made.stderr
    # beside the system's packages only what is named (torch is there already)
    no_deps = ["--no-deps"] if system_site_packages else []
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *no_deps, *requirements],
        timeout=1800,
        **run,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    marker.write_text(json.dumps(requirements) + "\n")
    return python


@pytest.fixture(scope="session")
def remote_venv(tmp_path_factory) -> Path:
    """Python of a venv with only torch/transformers/safetensors (cached across runs)."""
    return build_venv("remote-code-venv", REQUIREMENTS, tmp_path_factory.mktemp("venv-build"))


@pytest.fixture(scope="session")
def remote_torchao_venv(tmp_path_factory) -> Path:
    """The same without forgather, plus torchao: where a quantised model directory must load."""
    work = tmp_path_factory.mktemp("venv-build")
    return build_venv("remote-code-torchao-venv", (*REQUIREMENTS, TORCHAO), work)


@pytest.fixture(scope="session")
def torchao_python(tmp_path_factory) -> Path:
    """Python of a venv that sees this interpreter's packages (forgather too) plus torchao: where
    `forgather finalize --quantize` runs (torchao stays out of the dev install)."""
    work = tmp_path_factory.mktemp("venv-build")
    return build_venv("torchao-venv", (TORCHAO,), work, system_site_packages=True)
