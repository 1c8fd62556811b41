"""Image references, pull errors and the docker build command."""

from __future__ import annotations

import docker.errors
import pytest
from fgl.errors import FglError
from fgl.images import ImageRef, build_command, explain_pull_error

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("ref", "repo", "tag"),
    [
        ("forgather", "forgather", "latest"),
        ("forgather:runtime", "forgather", "runtime"),
        ("reg.lan:5000/team/forgather:1.0", "reg.lan:5000/team/forgather", "1.0"),
        ("reg.lan:5000/forgather", "reg.lan:5000/forgather", "latest"),
    ],
)
def test_image_refs(ref, repo, tag):
    r = ImageRef(ref)
    assert (r.repository, r.tag) == (repo, tag)


def test_pull_without_registry_suggests_sync_image():
    exc = docker.errors.APIError(
        "500",
        explanation='Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io: no such host',
    )
    err = explain_pull_error("gpu1", "forgather:runtime", exc)
    assert str(err).startswith("node gpu1: no registry reachable")
    assert "fgl sync-image forgather:runtime --nodes gpu1" in str(err)


def test_build_command(tmp_path):
    (tmp_path / "wheels").mkdir()
    cmd = build_command(
        "runtime",
        tmp_path,
        base_image="debian:bookworm",
        wheelhouse=str(tmp_path / "wheels"),
        build_args=["TORCH=2.13.0"],
        docker="/usr/bin/docker",
    )
    assert cmd == [
        "/usr/bin/docker", "build", "-f", f"{tmp_path}/Dockerfile.runtime", "-t", "forgather:runtime",
        "--build-arg", "BASE_IMAGE=debian:bookworm", "--build-arg", "WHEELHOUSE=wheels",
        "--build-arg", "TORCH=2.13.0", str(tmp_path),
    ]  # fmt: skip


def test_build_refuses_a_wheelhouse_outside_the_context(tmp_path):
    with pytest.raises(FglError, match="must be inside the build context"):
        build_command("dev", tmp_path / "ctx", wheelhouse=str(tmp_path))
    with pytest.raises(FglError, match="dev, runtime"):
        build_command("gpu", tmp_path)


def test_build_dry_run_prints_the_command(tmp_path, fgl, monkeypatch):
    (tmp_path / "Dockerfile.dev").write_text("FROM scratch\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FGL_DOCKER", "docker")
    result = fgl("build", "dev", "--base-image", "b:1", "--dry-run")
    assert result.exit_code == 0, result.output
    assert (
        result.output.strip()
        == f"docker build -f {tmp_path}/Dockerfile.dev -t forgather:dev --build-arg BASE_IMAGE=b:1 {tmp_path}"
    )
