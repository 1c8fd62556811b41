"""``fgl serve``: a model on one node, served by the image's ``forgather serve``, waited for on /health.

The local engine bind-mounts the model directory read-only; any other node gets a copy in a Docker
volume keyed by the model's digest (see :mod:`fgl.models`), made only when the node lacks it.
"""

from __future__ import annotations

import os
import socket
import time
import urllib.error
import urllib.request

from fgl.containers import ContainerSpec, container_kwargs
from fgl.engine import stop_and_remove
from fgl.errors import FglError, PreflightError
from fgl.inventory import NodeSpec
from fgl.launch import Settings
from fgl.models import MOUNT, ensure_model, model_source
from fgl.output import info
from fgl.preflight import resolve_ipv4
from fgl.run import Run
from fgl.runs import MemlockFallback, create_and_start

HEALTH_TIMEOUT = 300.0


def node_http_address(spec: NodeSpec) -> str:
    """Where this machine reaches a node's host-network ports."""
    if spec.address:
        return spec.address
    if spec.local:
        return "127.0.0.1"
    return resolve_ipv4(spec.hostname or spec.name)


def health_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether ``GET url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http URL we built
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def port_answers(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((host, port)) == 0


def serve(
    spec: NodeSpec,
    settings: Settings,
    model: str,
    port: int = 8000,
    name: str | None = None,
    extra: list[str] | None = None,
    timeout: float = HEALTH_TIMEOUT,
) -> tuple[str, str]:
    """Start the server container (detached) and wait for health; returns (run id, base URL)."""
    source = model_source(model)
    with Run.new("serve", [spec]) as run:
        (node,) = run.connect().nodes
        if node.image_id(settings.image) is None:
            raise PreflightError(
                f"image {settings.image} is missing on {node.name}; "
                f"fgl sync-image {settings.image} --nodes {node.name}"
            )
        host = node_http_address(spec)
        if port_answers(host, port):
            raise PreflightError(f"port {port} on {node.name} already answers; pass another --port")
        if spec.local:
            mount = f"{source.root}:{MOUNT}:ro"
        else:
            info(
                f"{node.name}: checking for {source.name} ({source.size / 2**20:.1f} MiB, digest {source.digest[:12]})"
            )
            action = ensure_model(node, source, settings.image)
            info(f"{node.name}: {source.name} {action} (volume {source.volume})")
            mount = f"{source.volume}:{MOUNT}:ro"
        gpus = settings.gpus_flag or spec.gpus or settings.gpus_default or "auto"
        if gpus == "auto":
            gpus = "all" if node.has_gpu_runtime() else "0"
        command = [
            "serve", source.path_in(MOUNT), "--host", "0.0.0.0", "--port", str(port),
            "--served-model-name", name or source.name, *(extra or []),
        ]  # fmt: skip
        kwargs = container_kwargs(
            ContainerSpec(
                image=settings.image,
                command=command,
                name=f"{run.id}-serve",
                run_id=run.id,
                role="serve",
                node=node.name,
                env=dict(settings.env),
                workspace=settings.workspace,
                working_dir=settings.working_dir,
                mounts=[*settings.mounts, mount],
                gpus=gpus,
                shm_size=settings.shm_size,
                memlock=settings.memlock != "off",
                uid=os.getuid(),
                gid=os.getgid(),
            )
        )
        url = f"http://{host}:{port}"
        run.record(
            image=settings.image,
            command=kwargs["command"],
            model=str(source.root if source.checkpoint is None else source.checkpoint),
            model_digest=source.digest,
            url=url,
            nodes=[{"address": host, "interface": None}],
        )
        container = MemlockFallback(settings.memlock).start(
            node.name, kwargs, lambda kw: create_and_start(node.client, kw)
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if health_ok(f"{url}/health"):
                return run.id, url
            container.reload()
            if container.status in ("exited", "dead"):
                tail = (
                    container.logs(tail=5).decode("utf-8", "replace").strip().replace("\n", " | ")
                )
                code = container.attrs.get("State", {}).get("ExitCode")
                stop_and_remove(container, 0)
                raise FglError(
                    f"the server on {node.name} exited {code} before answering /health: {tail[-400:]}"
                )
            time.sleep(0.5)
        stop_and_remove(container, 2)
        raise FglError(f"{url}/health did not answer within {timeout:g} s; the server was removed")
