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


@pytest.fixture(scope="session")
def remote_venv(tmp_path_factory) -> Path:
    """Python of a venv with only torch/transformers/safetensors (cached across runs)."""
    root = Path(os.environ.get("FORGATHER_TEST_CACHE", Path.home() / ".cache" / "forgather-tests"))
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    key = "-".join([py, *(r.replace("==", "") for r in REQUIREMENTS)])
    env_dir = root / f"remote-code-venv-{key}"
    marker = env_dir / ".forgather-complete"
    python = venv_python(env_dir)
    if marker.exists() and python.exists():
        return python
    shutil.rmtree(env_dir, ignore_errors=True)
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    cwd = tmp_path_factory.mktemp("venv-build")
    run = dict(cwd=cwd, env=clean_env(), capture_output=True, text=True)
    made = subprocess.run([sys.executable, "-m", "venv", str(env_dir)], timeout=300, **run)
    assert made.returncode == 0, made.stderr
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *REQUIREMENTS], timeout=1800, **run
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    marker.write_text(json.dumps(REQUIREMENTS) + "\n")
    return python
