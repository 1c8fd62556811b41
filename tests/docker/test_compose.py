"""compose/*.yaml: accepted by docker-compose, and train.yaml really trains on the CPU test image."""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest
import yaml

from .conftest import REPO, REPORT, SMALL_MODEL, host_dir, which_compose

pytestmark = pytest.mark.docker

COMPOSE_FILES = ["train.yaml", "serve.yaml", "dev.yaml"]


def compose(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run(
        [which_compose(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_file_is_valid(engine, name):
    done = compose("-f", str(REPO / "compose" / name), "config")
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    for service in config["services"].values():
        assert service["init"] is True
        # private IPC with a sized /dev/shm, never the host's (a security default, docs/security.md)
        assert "ipc" not in service and service["shm_size"] in ("16g", 16 * 2**30, "17179869184")
        assert service["environment"]["PUID"] == "1000"


def test_train_service_reserves_gpus_and_train_cpu_does_not(engine):
    done = compose("-f", str(REPO / "compose" / "train.yaml"), "config")
    services = yaml.safe_load(done.stdout)["services"]
    devices = services["train"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "deploy" not in services["train-cpu"]
    assert {k: v for k, v in services["train"].items() if k != "deploy"} == {
        k: v for k, v in services["train-cpu"].items() if k != "profiles"
    }


def test_compose_train_runs_tiny_llama_on_cpu(runtime_image, trained, tmp_path, session_cache):
    workspace = host_dir(tmp_path / "workspace", 1234, 1234)
    hf_cache = host_dir(tmp_path / "hf", 1234, 1234)
    override = tmp_path / "test-override.yaml"
    override.write_text(
        yaml.safe_dump(
            {
                "services": {
                    "train-cpu": {
                        "command": [
                            "forgather", "-p", "/opt/forgather/examples/tiny_experiments/tiny_llama",
                            "train", "--max-steps", "2", "--output-dir", "/workspace/output_models/tiny",
                            "trainer_args.eval_steps=2", "trainer_args.save_steps=2", *SMALL_MODEL,
                        ],
                        "network_mode": "none",
                        # the tokenizer cache of the docker run test
                        "volumes": [f"{session_cache}:/workspace/.cache"],
                    }
                }
            }
        )
    )  # fmt: skip
    env = {
        "FORGATHER_IMAGE": runtime_image,
        "FORGATHER_WORKSPACE": str(workspace),
        "HF_CACHE_DIR": str(hf_cache),
        "PUID": "1234",
        "PGID": "1234",
    }
    files = ["-f", str(REPO / "compose" / "train.yaml"), "-f", str(override)]
    project = ["-p", f"fgtest{uuid.uuid4().hex[:8]}"]
    started = time.monotonic()
    try:
        done = compose(
            *files, *project, "--profile", "cpu", "run", "--rm", "train-cpu", env=env, timeout=600
        )
    finally:
        compose(*files, *project, "down", "--remove-orphans", env=env)
    REPORT.add(
        f"docker-compose run train-cpu: tiny_llama 2 steps in {time.monotonic() - started:.1f}s"
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "training done: step 2/2" in done.stdout
    checkpoint = workspace / "output_models" / "tiny" / "checkpoints" / "checkpoint-2"
    assert (checkpoint / "manifest.json").is_file()
    assert checkpoint.stat().st_uid == 1234


def test_compose_serve_answers_openai_clients(runtime_image, trained):
    import openai

    from .conftest import free_port, http_json, wait_for

    model, _, _ = trained
    port = free_port()
    env = {
        "FORGATHER_IMAGE": runtime_image,
        "FORGATHER_MODEL_DIR": str(model),
        "FORGATHER_SERVE_HOST_PORT": str(port),
        "FORGATHER_SERVED_MODEL_NAME": "tiny",
        "PUID": "1234",
        "PGID": "1234",
    }
    files = ["-f", str(REPO / "compose" / "serve.yaml")]
    project = ["-p", f"fgtest{uuid.uuid4().hex[:8]}"]
    try:
        up = compose(*files, *project, "up", "-d", env=env, timeout=300)
        assert up.returncode == 0, up.stderr[-3000:]

        def healthy() -> bool:
            try:
                return http_json(f"http://127.0.0.1:{port}/health")[0] == 200
            except OSError:
                return False

        assert wait_for(healthy, timeout=120), compose(*files, *project, "logs", env=env).stdout[
            -3000:
        ]
        # published on loopback only, unless FORGATHER_SERVE_BIND says otherwise
        published = compose(*files, *project, "port", "serve", "8000", env=env)
        assert published.stdout.strip() == f"127.0.0.1:{port}", published.stdout + published.stderr
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["tiny"]
        reply = client.completions.create(model="tiny", prompt="Mr. Bingley", max_tokens=5)
        assert reply.usage.completion_tokens == 5
    finally:
        down = compose(*files, *project, "down", "--remove-orphans", env=env)
    assert down.returncode == 0, down.stderr
