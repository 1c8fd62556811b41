"""Serve mode (the health-check placeholder until the inference server lands) and HEALTHCHECK."""

from __future__ import annotations

import json
import uuid

import pytest

from .conftest import docker, free_port, http_json, wait_for

pytestmark = pytest.mark.docker


@pytest.fixture
def container():
    """A unique container name, removed afterwards."""
    name = f"forgather-test-{uuid.uuid4().hex[:8]}"
    yield name
    docker("rm", "-f", name, check=False)


def health(name: str) -> str:
    return docker("inspect", "-f", "{{.State.Health.Status}}", name, check=False).stdout.strip()


def test_serve_answers_health_and_becomes_healthy(runtime_image, trained, container):
    model, _, _ = trained
    port = free_port()  # host networking: no dependence on the engine's default bridge
    docker(
        "run", "-d", "--name", container, "--network", "host",
        "--health-interval", "1s", "--health-start-period", "30s",
        "-e", "PUID=1234", "-e", "PGID=1234", "-v", f"{model}:/models/tiny:ro",
        runtime_image, "serve", "--model", "/models/tiny", "--host", "127.0.0.1", "--port", str(port),
    )  # fmt: skip
    assert wait_for(lambda: health(container) == "healthy", timeout=60), (
        health(container),
        docker("logs", container, check=False).stderr[-3000:],
    )
    assert http_json(f"http://127.0.0.1:{port}/health") == (
        200,
        {"status": "ok", "model": "/models/tiny"},
    )
    status, body = http_json(f"http://127.0.0.1:{port}/v1/completions")
    assert status == 501 and "placeholder" in body["error"]
    state = json.loads(docker("inspect", "-f", "{{json .State.Health}}", container).stdout)
    assert state["Log"][-1]["ExitCode"] == 0


def test_serve_refuses_a_directory_without_config_json(run_image, runtime_image, tmp_path):
    tmp_path.chmod(0o755)
    done = run_image(
        runtime_image, "serve", "--model", "/models/empty",
        docker_args=("-v", f"{tmp_path}:/models/empty:ro"), check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "has no config.json" in done.stderr


def test_healthcheck_is_healthy_outside_serve_mode(run_image, runtime_image):
    assert run_image(runtime_image, "forgather-healthcheck").returncode == 0
