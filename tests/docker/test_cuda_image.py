"""The CUDA flavour of the runtime image, built offline from PyPI's CUDA torch wheels (manual).

Not run in CI: the wheelhouse downloads several GB (torch plus the nvidia-* wheels that carry the
CUDA runtime, cuDNN and NCCL) and the image is ~6 GB. Run it with

    FORGATHER_TEST_CUDA_IMAGE=1 python -m pytest -q -m manual tests/docker/test_cuda_image.py

No GPU is needed: the check loads torch's CUDA, cuDNN and NCCL libraries inside the image.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.docker.conftest import IMAGES, REPORT, docker, image_size

pytestmark = [
    pytest.mark.docker,
    pytest.mark.manual,
    pytest.mark.skipif(
        os.environ.get("FORGATHER_TEST_CUDA_IMAGE") != "1",
        reason="manual: set FORGATHER_TEST_CUDA_IMAGE=1 (downloads several GB of CUDA wheels)",
    ),
]

# pip's index for the CUDA wheels; the local machine's pip configuration (find-links of CPU wheels,
# constraints) is switched off so the default CUDA build of torch comes from the index.
INDEX = os.environ.get("FORGATHER_CUDA_INDEX", "https://pypi.org/simple")


def test_cuda_runtime_image_builds_offline_and_loads_cuda_cudnn_and_nccl(base_image):
    env = {
        **os.environ,
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_FIND_LINKS": "",
        "PIP_CONSTRAINT": "",
        "PIP_EXTRA_INDEX_URL": "",
    }
    started = time.monotonic()
    wheelhouse = subprocess.run(
        [sys.executable, str(IMAGES / "build_wheelhouse.py"), "--no-dev",
         f"--pip-arg=--index-url={INDEX}"],
        capture_output=True, text=True, timeout=3600, check=True, env=env,
    )  # fmt: skip
    path = Path(wheelhouse.stdout.strip().splitlines()[-1])
    deps = {p.name.split("-")[0] for p in (path / "deps").glob("*.whl")}
    assert any(name.startswith("nvidia_cudnn") for name in deps), sorted(deps)
    built = subprocess.run(
        [sys.executable, str(IMAGES / "build_image.py"), "runtime", "--base", base_image,
         "--wheelhouse", str(path), "--no-alias", "--network", "none"],
        capture_output=True, text=True, timeout=3600, check=True,
    )  # fmt: skip
    tag = built.stdout.strip().splitlines()[-1]
    assert "-cu" in tag, tag
    labels = json.loads(docker("image", "inspect", "-f", "{{json .Config.Labels}}", tag).stdout)
    assert labels["ai.forgather.cuda"] != "cpu"
    check = (
        "import json, torch; print(json.dumps({'cuda': torch.version.cuda, "
        "'cudnn': torch.backends.cudnn.version(), 'nccl': list(torch.cuda.nccl.version())}))"
    )
    done = docker("run", "--rm", "--network", "none", "--entrypoint", "python", tag, "-c", check)
    versions = json.loads(done.stdout.strip().splitlines()[-1])
    assert versions["cuda"] == labels["ai.forgather.cuda"]
    assert isinstance(versions["cudnn"], int) and versions["cudnn"] > 0
    assert len(versions["nccl"]) == 3 and versions["nccl"][0] >= 2
    size = image_size(tag) / 1e9
    REPORT.add(
        f"CUDA runtime image {tag}: {size:.2f} GB, wheelhouse + build {time.monotonic() - started:.0f}s, "
        f"CUDA {versions['cuda']}, cuDNN {versions['cudnn']}, NCCL {versions['nccl']}"
    )
