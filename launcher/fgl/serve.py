"""``fgl serve``: start the runtime image in serve mode on one node and wait until ``GET /health`` answers."""

from __future__ import annotations

import os
import socket
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from fgl import __version__
from fgl.containers import ContainerSpec, container_kwargs
from fgl.engine import Node, stop_and_remove
from fgl.errors import FglError, PreflightError
from fgl.inventory import NodeSpec
from fgl.launch import Settings
from fgl.preflight import resolve_ipv4
from fgl.rendezvous import new_run_id
from fgl.runs import MemlockFallback, RunDir, create_and_start, spec_record

HEALTH_TIMEOUT = 300.0


def serve_command(model: str, port: int) -> list[str]:
    """The container command of the image's serve mode."""
    return ["serve", "--model", model, "--host", "0.0.0.0", "--port", str(port)]


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


def serve(
    spec: NodeSpec,
    settings: Settings,
    model: str,
    port: int = 8000,
    command: list[str] | None = None,
    timeout: float = HEALTH_TIMEOUT,
) -> tuple[str, str]:
    """Start the server container (detached) and wait for health; returns (run id, base URL)."""
    model_dir = str(Path(model).expanduser().resolve()) if spec.local else model
    run_id = new_run_id()
    node = Node(spec)
    try:
        if node.image_id(settings.image) is None:
            raise PreflightError(
                f"image {settings.image} is missing on {node.name}; fgl sync-image {settings.image} --nodes {node.name}"
            )
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        host = node_http_address(spec)
        try:
            probe.settimeout(1.0)
            if probe.connect_ex((host, port)) == 0:
                raise PreflightError(
                    f"port {port} on {node.name} already answers; pass another --port"
                )
        finally:
            probe.close()
        gpus = settings.gpus_flag or spec.gpus or settings.gpus_default or "auto"
        if gpus == "auto":
            gpus = "all" if node.has_gpu_runtime() else "0"
        cspec = ContainerSpec(
            image=settings.image,
            command=command or serve_command(model_dir, port),
            name=f"{run_id}-serve",
            run_id=run_id,
            role="serve",
            node=node.name,
            env={"FGL_SERVE_PORT": str(port), "FGL_SERVE_MODEL": model_dir, **settings.env},
            workspace=settings.workspace,
            working_dir=settings.working_dir,
            mounts=[*settings.mounts, f"{model_dir}:{model_dir}:ro"],
            gpus=gpus,
            shm_size=settings.shm_size,
            memlock=settings.memlock != "off",
            uid=os.getuid(),
            gid=os.getgid(),
        )
        kwargs = container_kwargs(cspec)
        run_dir = RunDir(run_id).create()
        run_dir.write_record(
            {
                "run_id": run_id,
                "kind": "serve",
                "fgl_version": __version__,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "image": settings.image,
                "command": kwargs["command"],
                "nodes": [
                    {"rank": 0, "spec": spec_record(spec), "address": host, "interface": None}
                ],
                "url": f"http://{host}:{port}",
            }
        )
        container = MemlockFallback(settings.memlock).start(
            node.name, kwargs, lambda kw: create_and_start(node.client, kw)
        )
        url = f"http://{host}:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if health_ok(f"{url}/health"):
                return run_id, url
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
    finally:
        node.close()
