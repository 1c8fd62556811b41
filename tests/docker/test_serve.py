"""Serve mode of the runtime image: `forgather serve` on a mounted model, answering OpenAI clients,
healthy by its HEALTHCHECK."""

from __future__ import annotations

import json
import uuid

import openai
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


def test_the_runtime_image_serves_the_trained_model(runtime_image, trained, container):
    model, _, _ = trained
    port = free_port()  # host networking: no dependence on the engine's default bridge
    docker(
        "run", "-d", "--name", container, "--network", "host",
        "--health-interval", "1s", "--health-start-period", "60s",
        "-e", "PUID=1234", "-e", "PGID=1234", "-e", f"FORGATHER_SERVE_PORT={port}",
        "-e", "FORGATHER_SERVE_HOST=127.0.0.1", "-v", f"{model}:/models/model:ro",
        runtime_image, "serve", "--served-model-name", "tiny",
    )  # fmt: skip
    assert wait_for(lambda: health(container) == "healthy", timeout=120), (
        health(container),
        docker("logs", container, check=False).stderr[-3000:],
    )
    status, body = http_json(f"http://127.0.0.1:{port}/health")
    assert status == 200 and body["status"] == "ok" and body["model"] == "tiny"

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)
    reply = client.completions.create(model="tiny", prompt="It is a truth", max_tokens=8)
    assert reply.usage.completion_tokens == 8
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=4, stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    state = json.loads(docker("inspect", "-f", "{{json .State.Health}}", container).stdout)
    assert state["Log"][-1]["ExitCode"] == 0

    # The server runs as the remapped user, and `docker stop` (SIGTERM) ends it cleanly.
    top = docker("top", container, "-o", "pid,uid,args").stdout
    assert any(
        line.split()[1] == "1234" and "bin/forgather" in line for line in top.splitlines()[1:]
    ), top
    docker("stop", container, timeout=60)
    assert docker("inspect", "-f", "{{.State.ExitCode}}", container).stdout.strip() == "0"
    assert "stopped" in docker("logs", container).stderr


def test_serve_refuses_a_directory_without_config_json(run_image, runtime_image, tmp_path):
    tmp_path.chmod(0o755)
    done = run_image(
        runtime_image, "serve", "/models/empty",
        docker_args=("-v", f"{tmp_path}:/models/empty:ro"), check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert (
        "error: /models/empty holds neither a model (config.json) nor a checkpoint" in done.stderr
    )


def test_healthcheck_is_healthy_outside_serve_mode(run_image, runtime_image):
    assert run_image(runtime_image, "forgather-healthcheck").returncode == 0
