"""The runtime image: offline build, labels, entrypoint dispatch, user remapping, init, leanness."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import (
    IMAGES,
    REPORT,
    build_image,
    build_log_path,
    docker,
    host_dir,
    image_size,
)

pytestmark = pytest.mark.docker


def test_base_image_script_is_idempotent(base_image):
    started = time.monotonic()
    done = subprocess.run(
        [str(IMAGES / "build_base.sh")], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == base_image
    assert time.monotonic() - started < 10
    versions = docker(
        "run",
        "--rm",
        "--network",
        "none",
        base_image,
        "sh",
        "-c",
        "python3 -V; command -v tini gosu",
    )
    assert "Python 3.11" in versions.stdout


def test_wheelhouse_is_cached_and_complete(wheelhouse):
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(IMAGES / "build_wheelhouse.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert time.monotonic() - started < 15
    again = json.loads((Path(done.stdout.strip()) / "manifest.json").read_text())
    # Same dependencies (no download); the path changes only if forgather/ was edited meanwhile.
    assert again["deps_key"] == json.loads((wheelhouse / "manifest.json").read_text())["deps_key"]
    manifest = json.loads((wheelhouse / "manifest.json").read_text())
    assert manifest["torch_version"].startswith("2.13.0")
    assert [p.name for p in (wheelhouse / "forgather").glob("*.whl")] == [
        f"forgather-{manifest['forgather_version']}-py3-none-any.whl"
    ]
    names = {p.name.split("-")[0].lower() for p in (wheelhouse / "deps").glob("*.whl")}
    assert {"torch", "transformers", "datasets", "pytest", "ruff", "hypothesis"} <= names
    assert "launcher" not in names and "forgather_launcher" not in names


def test_runtime_image_builds_offline_from_the_wheelhouse(runtime_image):
    log = build_log_path(runtime_image).read_text()
    assert "--network none" in log.splitlines()[0]
    # The system step ran without apt, or BuildKit reused that layer from an earlier offline build
    # of the same base (then it prints CACHED instead of the step's output).
    system_step = step_lines(log, "install_system.sh")
    assert any(
        "the base has everything; no apt" in line or line.endswith(" CACHED")
        for line in system_step
    ), "\n".join(system_step)
    assert "pip install --no-index" in log


def step_lines(log: str, command_part: str) -> list[str]:
    """The lines of the BuildKit step (`#N ...` in plain progress) whose command mentions `command_part`."""
    steps = {
        line.split()[0]
        for line in log.splitlines()
        if line.startswith("#") and "RUN" in line and command_part in line
    }
    assert steps, f"no RUN step mentioning {command_part} in the build log"
    return [line for line in log.splitlines() if line.split()[:1] and line.split()[0] in steps]


def test_runtime_image_has_oci_and_forgather_labels(runtime_image, wheelhouse):
    labels = json.loads(
        docker("image", "inspect", "-f", "{{json .Config.Labels}}", runtime_image).stdout
    )
    manifest = json.loads((wheelhouse / "manifest.json").read_text())
    for key in ("title", "description", "version", "source", "licenses", "created", "revision"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels["org.opencontainers.image.version"] == manifest["forgather_version"]
    assert labels["org.opencontainers.image.revision"] == manifest["revision"]
    assert labels["ai.forgather.version"] == manifest["forgather_version"]
    assert labels["ai.forgather.torch"] == manifest["torch_version"]
    assert labels["ai.forgather.cuda"] == "cpu"
    assert labels["ai.forgather.python"] == "3.11"


def test_versioned_tag_names_python_cuda_and_torch(wheelhouse):
    manifest = json.loads((wheelhouse / "manifest.json").read_text())
    assert (
        build_image.image_tag("runtime", manifest, "cpu")
        == "forgather:0.1.0-py3.11-cpu-torch2.13.0"
    )
    assert (
        build_image.image_tag("dev", manifest, "12.8")
        == "forgather:0.1.0-py3.11-cu12.8-torch2.13.0-dev"
    )
    assert (
        build_image.cuda_flavor("nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04", "2.13.0", None)
        == "12.8"
    )
    assert (
        build_image.cuda_flavor("nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04", "2.13.0+cpu", None)
        == "cpu"
    )
    # PyPI's plain torch on a plain Debian base: the CUDA runtime wheel it depends on names CUDA.
    wheels = ["torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl"]
    assert build_image.cuda_flavor("forgather-base:bookworm", "2.13.0", None, wheels) == "cpu"
    wheels.append("nvidia_cuda_runtime-13.0.96-py3-none-manylinux2014_x86_64.whl")
    assert build_image.cuda_flavor("forgather-base:bookworm", "2.13.0", None, wheels) == "13.0"
    cu12 = ["nvidia_cuda_runtime_cu12-12.8.90-py3-none-manylinux2014_x86_64.whl"]
    assert build_image.cuda_flavor("forgather-base:bookworm", "2.13.0", None, cu12) == "12.8"


def test_forgather_version_runs(run_image, runtime_image, wheelhouse):
    manifest = json.loads((wheelhouse / "manifest.json").read_text())
    done = run_image(runtime_image, "forgather", "--version")
    assert done.stdout.strip() == f"forgather {manifest['forgather_version']}"
    assert "GPUs: none visible" in done.stderr


def test_gpu_summary_comes_from_nvidia_smi(run_image, runtime_image, tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$*" in *driver_version*) echo 570.86.15;; '
        "*) echo '0, NVIDIA H100 80GB HBM3, 81559'; echo '1, NVIDIA H100 80GB HBM3, 81559';; esac\n"
    )
    fake.chmod(0o755)
    tmp_path.chmod(0o755)
    done = run_image(
        runtime_image, "true", docker_args=("-v", f"{fake}:/usr/local/bin/nvidia-smi:ro")
    )
    assert done.stderr.strip() == (
        "forgather-entrypoint: GPUs: 2 (0: NVIDIA H100 80GB HBM3 81559 MiB; "
        "1: NVIDIA H100 80GB HBM3 81559 MiB), driver 570.86.15"
    )


def test_no_arguments_print_forgather_help(run_image, runtime_image):
    assert "Usage: forgather" in run_image(runtime_image).stdout


def test_subcommands_and_options_go_to_forgather(run_image, runtime_image):
    listing = run_image(
        runtime_image, "-p", "/opt/forgather/examples/tiny_experiments/tiny_llama", "ls"
    )
    assert "train_tiny_llama.yaml" in listing.stdout
    train = run_image(runtime_image, "fgl-train", "--help")
    assert "Usage: forgather train" in train.stdout


def test_other_commands_are_executed_as_the_user(run_image, runtime_image):
    done = run_image(runtime_image, "sh", "-c", "id -u; id -g; id -un; echo $HOME; pwd")
    assert done.stdout.split() == ["1000", "1000", "forgather", "/home/forgather", "/workspace"]


def test_tini_is_pid_1(run_image, runtime_image):
    cmdline = run_image(runtime_image, "cat", "/proc/1/cmdline").stdout.split("\0")
    assert cmdline[:3] == ["tini", "--", "/usr/local/bin/forgather-entrypoint"]


def test_puid_pgid_own_files_written_to_a_bind_mount(run_image, runtime_image, tmp_path):
    out = host_dir(tmp_path / "out", 1234, 2345)
    done = run_image(
        runtime_image,
        "sh", "-c", "id -u; id -g; touch /workspace/out/file; mkdir /workspace/out/dir",
        docker_args=("-e", "PUID=1234", "-e", "PGID=2345", "-v", f"{out}:/workspace/out"),
    )  # fmt: skip
    assert done.stdout.split() == ["1234", "2345"]
    for path in (out / "file", out / "dir"):
        stat = path.stat()
        assert (stat.st_uid, stat.st_gid) == (1234, 2345), path


def test_an_empty_root_owned_mount_is_handed_to_the_user(run_image, runtime_image, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()  # what the engine makes for a missing bind-mount source: empty, root's
    run_image(
        runtime_image, "touch", "/workspace/x",
        docker_args=("-e", "PUID=1234", "-e", "PGID=1234", "-v", f"{ws}:/workspace"),
    )  # fmt: skip
    assert (ws / "x").stat().st_uid == 1234


def test_runtime_image_is_lean(run_image, runtime_image):
    script = (
        "for c in gcc cc g++ make curl; do command -v $c; done; "
        "ls /root/.cache/pip ~/.cache/pip 2>/dev/null; "
        "ls -d /opt/forgather/venv/lib/python3*/site-packages/torch/test 2>/dev/null; "
        "ls /opt/forgather/venv/lib/python3*/site-packages | grep -i -e '^tests$' -e launcher; "
        "ls /var/lib/apt/lists | grep -v -e lock -e partial; true"
    )
    assert (
        run_image(runtime_image, "sh", "-c", script, docker_args=("-e", "PUID=0")).stdout.strip()
        == ""
    )


def test_image_sizes(runtime_image, dev_image, base_image):
    sizes = {
        name: image_size(image)
        for name, image in (("base", base_image), ("runtime", runtime_image), ("dev", dev_image))
    }
    for name, size in sizes.items():
        line = f"{name} image size: {size / 1e9:.2f} GB ({size} bytes)"
        print(line)
        REPORT.add(line)
    assert sizes["runtime"] < 2.0e9
