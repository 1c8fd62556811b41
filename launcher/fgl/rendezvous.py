"""Rendezvous planning (pure): one run id, node 0's endpoint, and each node's torchrun flags and socket env.

The plan is computed from facts gathered by the pre-flight probe on every node (see ``fgl.preflight``):
node 0's address as the other nodes reach it, each node's own LAN address and the interface that routes
to node 0. Every node then runs ``torchrun <flags> --no-python CMD...``: one torchrun per container.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime

DEFAULT_PORT = 29500
RUN_ID = re.compile(r"^fgl-\d{8}-\d{6}-[0-9a-f]{4}$")
MODES = ("c10d", "static")


def new_run_id(now: datetime | None = None, suffix: str | None = None) -> str:
    """A run id ``fgl-<yyyymmdd-hhmmss>-<4 hex>`` (UTC)."""
    now = now or datetime.now(UTC)
    return f"fgl-{now:%Y%m%d-%H%M%S}-{suffix or secrets.token_hex(2)}"


def is_ip(text: str | None) -> bool:
    """Whether ``text`` is a literal IPv4/IPv6 address."""
    try:
        ipaddress.ip_address(text or "")
        return True
    except ValueError:
        return False


def nproc_for(gpus: str, explicit: str | None = None) -> str:
    """torchrun's ``--nproc-per-node`` for a node: the explicit value, else one process per GPU (or 1)."""
    if explicit:
        return str(explicit)
    if gpus == "all":
        return "gpu"
    if gpus.isdigit() and int(gpus) > 0:
        return gpus
    return "1"


@dataclass(frozen=True)
class NodeNet:
    """What the plan needs to know about one node's network."""

    name: str
    address: str
    interface: str | None = None
    nproc: str = "1"


@dataclass(frozen=True)
class NodePlan:
    """One node's part of the plan: its rank, torchrun flags and socket environment."""

    rank: int
    name: str
    address: str
    interface: str | None
    torchrun_args: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)

    def command(self, cmd: list[str]) -> list[str]:
        """The container command: ``torchrun <flags> --no-python CMD...``."""
        return ["torchrun", *self.torchrun_args, "--no-python", *cmd]


@dataclass(frozen=True)
class RendezvousPlan:
    """The whole run's rendezvous."""

    run_id: str
    mode: str
    endpoint_address: str
    port: int
    nodes: tuple[NodePlan, ...]

    @property
    def nnodes(self) -> int:
        return len(self.nodes)

    @property
    def endpoint(self) -> str:
        host = (
            f"[{self.endpoint_address}]" if ":" in self.endpoint_address else self.endpoint_address
        )
        return f"{host}:{self.port}"


def plan_rendezvous(
    run_id: str,
    nodes: list[NodeNet],
    port: int = DEFAULT_PORT,
    mode: str = "c10d",
    endpoint_address: str | None = None,
) -> RendezvousPlan:
    """Every node's torchrun flags and env for one run; node 0 hosts the rendezvous.

    ``endpoint_address`` is node 0's address as the other nodes reach it (default: node 0's address).
    c10d mode: ``--rdzv-backend c10d --rdzv-endpoint ADDR:PORT --rdzv-id RUN``, node 0 adds
    ``--rdzv-conf is_host=1``; static mode: ``--master-addr ADDR --master-port PORT``. Both pass
    ``--local-addr`` (each node's own address): hosts whose hostname resolves to loopback hang otherwise.
    """
    if not nodes:
        raise ValueError("a rendezvous needs at least one node")
    if mode not in MODES:
        raise ValueError(f"rendezvous mode must be one of {MODES}, got {mode!r}")
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is not in 1..65535")
    addr = endpoint_address or nodes[0].address
    host = f"[{addr}]" if ":" in addr else addr
    n = len(nodes)
    plans = []
    for rank, node in enumerate(nodes):
        args = ["--nnodes", str(n), "--node-rank", str(rank), "--nproc-per-node", node.nproc]
        if mode == "c10d":
            args += [
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"{host}:{port}",
                "--rdzv-id",
                run_id,
            ]
            if rank == 0:
                args += ["--rdzv-conf", "is_host=1"]
        else:
            args += ["--master-addr", addr, "--master-port", str(port)]
        args += ["--local-addr", node.address]
        env = {"FGL_RUN_ID": run_id, "FGL_NODE_RANK": str(rank), "FGL_NNODES": str(n)}
        if node.interface:
            env["NCCL_SOCKET_IFNAME"] = node.interface
            env["GLOO_SOCKET_IFNAME"] = node.interface
        plans.append(
            NodePlan(
                rank=rank,
                name=node.name,
                address=node.address,
                interface=node.interface,
                torchrun_args=tuple(args),
                env=env,
            )
        )
    return RendezvousPlan(
        run_id=run_id, mode=mode, endpoint_address=addr, port=port, nodes=tuple(plans)
    )


def choose_port(requested: int | None, free: list[int], default: int = DEFAULT_PORT) -> int | None:
    """The rendezvous port: the requested one if free on node 0, else the first free from ``default`` on.

    Returns None when the requested port is taken (the caller refuses: the user asked for that port).
    """
    if requested is not None:
        return requested if requested in free else None
    candidates = sorted(p for p in free if p >= default)
    return candidates[0] if candidates else None
