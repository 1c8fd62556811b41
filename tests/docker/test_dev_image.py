"""The dev image: editable checkout, dev tools, host-user remapping, a mounted checkout."""

from __future__ import annotations

import shutil

import pytest

from .conftest import REPO, host_dir

pytestmark = pytest.mark.docker


def test_dev_image_has_the_tools_and_an_editable_checkout(run_image, dev_image):
    script = (
        "id -u; pwd; python -c 'import forgather; print(forgather.__file__)'; "
        "pytest --version; ruff --version; python -c 'import hypothesis'; git --version || true"
    )
    out = run_image(dev_image, "sh", "-c", script).stdout.splitlines()
    assert out[0] == "1000"
    assert out[1] == "/workspace/forgather"
    assert out[2] == "/workspace/forgather/forgather/__init__.py"
    assert out[3].startswith("pytest ") and out[4].startswith("ruff ")


def test_dev_image_uses_a_mounted_checkout_as_the_host_user(run_image, dev_image, tmp_path):
    checkout = host_dir(tmp_path / "checkout", 1234, 1234)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, checkout / name)
    shutil.copytree(
        REPO / "forgather", checkout / "forgather", ignore=shutil.ignore_patterns("__pycache__")
    )
    (checkout / "forgather" / "__init__.py").open("a").write('\nMOUNTED = "yes"\n')
    for path in [checkout, *checkout.rglob("*")]:
        shutil.chown(path, 1234, 1234)
    done = run_image(
        dev_image,
        "sh", "-c", "id -u; python -c 'import forgather; print(forgather.MOUNTED)'; touch made-here",
        docker_args=(
            "-e", "PUID=1234", "-e", "PGID=1234", "-e", "FORGATHER_DEV_EDITABLE=1",
            "-v", f"{checkout}:/workspace/forgather",
        ),
    )  # fmt: skip
    assert done.stdout.split() == ["1234", "yes"]
    assert (checkout / "made-here").stat().st_uid == 1234
    assert not list(checkout.glob("*.egg-info")) or all(
        p.stat().st_uid == 1234 for p in checkout.glob("*.egg-info")
    )
