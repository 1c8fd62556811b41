"""Pre-flight: what every node offers, checked in parallel before anything starts.

Per node: the engine answers, the image is there with the same id everywhere, the GPU runtime is there
when GPUs are asked for, and a probe (``python3 -c <fgl/probe_script.py>`` run by the node's own python3
over SSH, or where that cannot stand for a container, in a short-lived container of the run's image with
host network) reports the interface and source address that route to node 0,
whether the rendezvous port is free (on node 0), /dev/shm and the clock. The rendezvous plan is made
from these facts, so NCCL_SOCKET_IFNAME/GLOO_SOCKET_IFNAME and ``--local-addr`` are decided before
the first container starts and are visible in ``--dry-run``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import docker.errors

from fgl.engine import Node, parallel
from fgl.engine_notes import engine_key
from fgl.errors import NodeError, PreflightError
from fgl.inventory import NodeSpec
from fgl.rendezvous import DEFAULT_PORT, is_ip

PROBE_MARKER = "FGL-PROBE "
PROBE_TIMEOUT = 60.0
PORT_CANDIDATES = 16
MAX_CLOCK_SKEW = 5.0


def probe_source() -> str:
    """The probe's Python source, shipped to containers as ``python3 -c`` text."""
    return (Path(__file__).with_name("probe_script.py")).read_text()


def parse_probe_output(text: str) -> dict[str, Any]:
    """The facts in a probe's output (the last ``FGL-PROBE {json}`` line); ValueError if there is none."""
    for line in reversed(text.splitlines()):
        idx = line.find(PROBE_MARKER)
        if idx >= 0:
            return json.loads(line[idx + len(PROBE_MARKER) :])
    tail = " | ".join(text.strip().splitlines()[-3:])[:300]
    raise ValueError(f"the probe printed no result ({tail or 'no output'})")


def parse_engine_time(text: str) -> float:
    """Seconds since the epoch of an engine's ``SystemTime`` (RFC 3339, nanoseconds allowed)."""
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$", text.strip())
    if not m:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    base, frac, tz = m.groups()
    tz = "+00:00" if tz in (None, "Z") else tz
    seconds = datetime.fromisoformat(base + tz).timestamp()
    return seconds + (int(frac) / 10 ** len(frac) if frac else 0.0)


def resolve_ipv4(host: str) -> str:
    """The IPv4 address this machine uses for ``host``."""
    if is_ip(host):
        return host
    try:
        return socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0]
    except (OSError, IndexError):
        raise PreflightError(
            f"cannot resolve {host!r} to an address; set 'address:' for it in fgl.yaml"
        ) from None


def route_source(peer: str) -> str:
    """This machine's source address on the route to ``peer`` (no packet is sent)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect((peer, 9))
        return s.getsockname()[0]
    except OSError as exc:
        raise PreflightError(
            f"no route from this machine to {peer}: {exc.strerror or exc}"
        ) from None
    finally:
        s.close()


def endpoint_address(
    specs: list[NodeSpec],
    resolve: Callable[[str], str] = resolve_ipv4,
    source_towards: Callable[[str], str] = route_source,
) -> str:
    """Node 0's address as the other nodes reach it.

    Its ``address`` field; else the address fgl itself reaches it by; for the local engine as node 0,
    127.0.0.1 when it is the only node, else this machine's address on the route to node 1.
    """
    node0 = specs[0]
    if node0.address:
        return node0.address
    if node0.local:
        if len(specs) == 1:
            return "127.0.0.1"
        peer = specs[1]
        peer_addr = peer.address or resolve(peer.hostname or peer.name)
        return source_towards(peer_addr)
    return resolve(node0.hostname or node0.name)


def gpus_setting(flag: str | None, node: NodeSpec, default: str | None) -> str:
    """A node's GPU setting: the command line, else the node's ``gpus``, else ``gpus_per_node``, else auto."""
    return flag or node.gpus or default or "auto"


def effective_gpus(setting: str, has_gpu_runtime: bool) -> str:
    """``auto`` becomes ``all`` where the engine has the nvidia runtime and ``0`` elsewhere."""
    if setting == "auto":
        return "all" if has_gpu_runtime else "0"
    return setting


def image_problems(image: str, ids: dict[str, str | None]) -> list[str]:
    """What is wrong with an image across nodes: missing somewhere, or different ids (pure)."""
    problems = []
    missing = [n for n, i in ids.items() if i is None]
    if missing:
        problems.append(
            f"image {image} is missing on {', '.join(missing)}: copy it with "
            f"fgl sync-image {image} --nodes {','.join(missing)} (or fgl pull)"
        )
    present = {n: i for n, i in ids.items() if i is not None}
    distinct = sorted(set(present.values()))
    if len(distinct) > 1:
        groups = "; ".join(
            f"{', '.join(n for n, i in present.items() if i == d)} have {d[:19]}" for d in distinct
        )
        problems.append(
            f"image {image} differs between nodes ({groups}); make them equal with "
            f"fgl sync-image {image} --nodes {','.join(present)}"
        )
    return problems


@dataclass
class NodeFacts:
    """What pre-flight learned about one node."""

    rank: int
    name: str
    engine_version: str | None = None
    engine_key: str | None = None
    engine_name: str | None = None
    rootless: bool = False
    gpu_runtime: bool = False
    gpus: str = "0"
    image_id: str | None = None
    probe: dict[str, Any] = field(default_factory=dict)
    clock_skew: float | None = None
    shm_bytes: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def interface(self) -> str | None:
        return self.probe.get("interface")

    @property
    def source(self) -> str | None:
        return self.probe.get("source")


def probe_on_host(node: Node, target: str | None, ports: list[int]) -> dict[str, Any] | None:
    """The probe run by the node's own ``python3`` (a subprocess here, or over the node's SSH
    connection; no container), or None when that fails (no python3 there, a restricted shell)."""
    args = json.dumps({"target": target, "ports": ports})
    try:
        code, output = node.run_on_host(["python3", "-c", probe_source(), args])
        return parse_probe_output(output) if code == 0 else None
    except Exception:  # any failure here only means: use the container
        return None


def host_probe_stands_for_container(facts: dict[str, Any] | None, f: NodeFacts) -> bool:
    """Whether the host's view is what a host-network container of this engine sees: the engine runs
    on that host (its name is the host's; not a VM like Docker Desktop) and is not rootless (whose
    containers live in a network namespace of their own)."""
    return bool(facts) and not f.rootless and facts.get("hostname") == f.engine_name


def run_probe_container(
    node: Node, image: str, target: str | None, ports: list[int], run_id: str = "probe"
) -> dict[str, Any]:
    """Run the probe container on a node (host network; its own IPC namespace; as the invoking
    user, not root) and return its facts. Its /dev/shm is its own, so it reports none."""
    client = node.client
    args = json.dumps({"target": target, "ports": ports})
    kwargs = {
        "image": image,
        "entrypoint": ["python3", "-c", probe_source(), args],
        "command": [],
        "network_mode": "host",
        "ipc_mode": "private",
        "labels": {"fgl.run": run_id, "fgl.role": "probe", "fgl.node-rank": str(node.rank)},
        "detach": True,
        "user": f"{os.getuid()}:{os.getgid()}",
    }
    try:
        container = client.containers.create(**kwargs)
    except docker.errors.APIError as exc:
        raise node.fail(
            f"cannot create the probe container from {image}: {exc.explanation or exc}"
        ) from None
    try:
        container.start()
        result = container.wait(timeout=PROBE_TIMEOUT)
        output = container.logs().decode("utf-8", "replace")
        if result.get("StatusCode") != 0:
            tail = " | ".join(output.strip().splitlines()[-2:])[:300]
            raise node.fail(
                f"the probe container exited {result.get('StatusCode')} ({tail}); does {image} have python3?"
            )
        try:
            facts = parse_probe_output(output)
        except ValueError as exc:
            raise node.fail(str(exc)) from None
        facts["shm_bytes"] = None  # the container's own /dev/shm says nothing of the host's
        return facts
    except docker.errors.APIError as exc:
        raise node.fail(f"probe container: {exc.explanation or exc}") from None
    except Exception as exc:
        if "timed out" in str(exc).lower():
            raise node.fail(
                f"the probe container did not finish within {PROBE_TIMEOUT:g} s"
            ) from None
        raise
    finally:
        with contextlib.suppress(Exception):
            container.remove(force=True)


@dataclass
class Preflight:
    """The checked state of every node of a run."""

    image: str
    endpoint: str
    facts: list[NodeFacts]
    free_ports: list[int]

    @property
    def image_id(self) -> str | None:
        ids = {f.image_id for f in self.facts}
        return ids.pop() if len(ids) == 1 else None

    def problems(self) -> list[str]:
        return [p for f in self.facts for p in f.problems]


def gather(
    nodes: list[Node],
    image: str,
    *,
    gpus_flag: str | None = None,
    gpus_default: str | None = None,
    port: int | None = None,
    run_id: str = "probe",
    probe: bool = True,
    endpoint: str | None = None,
    strict: bool = True,
) -> Preflight:
    """Check every node in parallel (engine, GPU runtime, image id, the probe); problems are collected.

    The probe runs on each node's host while ``docker info`` and the image lookup are under way; a probe
    container replaces it where the host's view cannot stand for a container's. ``strict`` (``fgl up``)
    starts probe containers only when everything else passed; otherwise (``fgl doctor``) on every node
    whose engine answered and has the image.
    """
    facts = [NodeFacts(rank=n.rank, name=n.name) for n in nodes]
    addr = endpoint if endpoint is not None else endpoint_address([n.spec for n in nodes])
    wanted = [port] if port else list(range(DEFAULT_PORT, DEFAULT_PORT + PORT_CANDIDATES))

    def ports_for(node: Node) -> list[int]:
        return wanted if node.rank == 0 else []

    def engine(pair: tuple[Node, NodeFacts]) -> None:
        node, f = pair
        # one round trip each: the image lookup and the host probe overlap `docker info`
        with ThreadPoolExecutor(2) as pool:
            image_id = pool.submit(node.image_id, image)
            host = pool.submit(probe_on_host, node, addr, ports_for(node)) if probe else None
            info = node.info()
            f.image_id = image_id.result()
            host_facts = host.result() if host else None
        f.engine_version = info.get("ServerVersion")
        f.engine_key = engine_key(info)
        f.engine_name = info.get("Name")
        f.rootless = any("rootless" in str(o) for o in info.get("SecurityOptions") or [])
        if host_probe_stands_for_container(host_facts, f):
            f.probe = {**host_facts, "via": "host"}
        f.gpu_runtime = node.has_gpu_runtime(info)
        setting = gpus_setting(gpus_flag, node.spec, gpus_default)
        f.gpus = effective_gpus(setting, f.gpu_runtime)
        if f.gpus != "0" and not f.gpu_runtime:
            f.problems.append(
                f"node {node.name}: {f.gpus} GPUs asked for but its engine has no nvidia runtime "
                "(install nvidia-container-toolkit, or pass --gpus-per-node 0)"
            )
        try:
            f.clock_skew = parse_engine_time(info["SystemTime"]) - time.time()
        except (KeyError, ValueError):
            f.clock_skew = None

    results = parallel(engine, list(zip(nodes, facts, strict=True)))
    for f, r in zip(facts, results, strict=True):
        if isinstance(r, NodeError):
            f.problems.append(str(r))
        elif isinstance(r, BaseException):
            raise r
    problems = image_problems(image, {f.name: f.image_id for f in facts if f.engine_version})
    if problems:
        facts[0].problems.extend(problems)
    free: list[int] = []
    if probe and (not strict or not any(f.problems for f in facts)):

        def in_container(pair: tuple[Node, NodeFacts]) -> None:
            node, f = pair
            if f.probe or not f.engine_version or not f.image_id:
                return
            f.probe = run_probe_container(node, image, addr, ports_for(node), run_id)

        results = parallel(in_container, list(zip(nodes, facts, strict=True)))
        for node, f, r in zip(nodes, facts, results, strict=True):
            if isinstance(r, NodeError):
                f.problems.append(str(r))
            elif isinstance(r, BaseException):
                raise r
            f.shm_bytes = f.probe.get("shm_bytes")
            if not f.interface and f.probe:
                f.problems.append(
                    f"node {node.name}: no interface routes to node 0 at {addr} "
                    f"({f.probe.get('route_error', 'no route')}); set 'address:' in fgl.yaml"
                )
        free = list(facts[0].probe.get("free_ports", []))
    return Preflight(image=image, endpoint=addr, facts=facts, free_ports=free)
