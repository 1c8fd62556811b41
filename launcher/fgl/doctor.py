"""``fgl doctor``: one row per node with everything that makes a multi-node run start or hang."""

from __future__ import annotations

from dataclasses import dataclass, field

from fgl.engine import Node, parallel
from fgl.errors import FglError
from fgl.inventory import NodeSpec
from fgl.preflight import MAX_CLOCK_SKEW, NodeFacts, Preflight, endpoint_address, gather
from fgl.rendezvous import DEFAULT_PORT

MIN_SHM = 1 << 30

COLUMNS = (
    "rank",
    "node",
    "ssh",
    "engine",
    "gpu runtime",
    "image",
    "iface → node 0",
    "port",
    "shm",
    "clock",
    "verdict",
)


@dataclass
class Row:
    """One node's findings; ``blocking`` problems would make a run fail or hang."""

    rank: int
    node: str
    ssh: str = "-"
    engine: str = "-"
    gpu: str = "-"
    image: str = "-"
    route: str = "-"
    port: str = "-"
    shm: str = "-"
    clock: str = "-"
    blocking: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        # a missing or differing image is reported once for all nodes (in node 0's problems) but
        # fails every node it concerns
        if self.blocking or self.image == "missing" or self.image.endswith("(differs)"):
            return "FAIL"
        return "warn" if self.warnings else "ok"

    def cells(self) -> tuple[object, ...]:
        return (
            self.rank,
            self.node,
            self.ssh,
            self.engine,
            self.gpu,
            self.image,
            self.route,
            self.port,
            self.shm,
            self.clock,
            self.verdict,
        )


def human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def rows_from(
    specs: list[NodeSpec],
    reach: list[object],
    pf: Preflight | None,
    port: int | None,
    host_ipc: bool = False,
) -> list[Row]:
    """Turn connection results and pre-flight facts into rows (pure: no engine is touched).
    The host's /dev/shm matters only to containers that share the host's IPC (`host_ipc`)."""
    rows: list[Row] = []
    facts = {f.name: f for f in pf.facts} if pf else {}
    ids = {f.image_id for f in facts.values() if f.image_id}
    wanted = port or DEFAULT_PORT
    for rank, (spec, r) in enumerate(zip(specs, reach, strict=True)):
        row = Row(rank, spec.name)
        if isinstance(r, BaseException):
            row.ssh = "local" if spec.local else "FAIL"
            row.engine = "FAIL"
            row.blocking.append(str(r))
            rows.append(row)
            continue
        row.ssh = "local" if spec.local else "ok"
        f: NodeFacts | None = facts.get(spec.name)
        if f is None:
            rows.append(row)
            continue
        row.engine = f.engine_version or "FAIL"
        row.gpu = ("nvidia" if f.gpu_runtime else "none") + (
            f" (gpus {f.gpus})" if f.gpus != "0" else ""
        )
        if f.image_id is None:
            row.image = "missing"
        else:
            row.image = f.image_id.removeprefix("sha256:")[:12] + (
                " (differs)" if len(ids) > 1 else ""
            )
        if f.probe:
            iface, src = f.interface, f.source
            row.route = f"{iface} ({src})" if iface else "none"
            if rank == 0:
                free = f.probe.get("free_ports", [])
                row.port = f"{wanted} free" if wanted in free else f"{wanted} IN USE"
                if wanted not in free:
                    row.blocking.append(f"node {spec.name}: port {wanted} is in use (pass --port)")
            shm = f.probe.get("shm_bytes")
            row.shm = human_bytes(shm)
            if host_ipc and shm is not None and shm < MIN_SHM:
                row.warnings.append(
                    f"node {spec.name}: /dev/shm is {human_bytes(shm)} and containers share it "
                    "(shm_size: host); give them their own: shm_size: 16g"
                )
            resolves = f.probe.get("hostname_resolves_to", [])
            if resolves and all(a.startswith("127.") for a in resolves):
                row.warnings.append(
                    f"node {spec.name}: hostname {f.probe.get('hostname')} resolves to loopback "
                    "(fgl passes --local-addr and is_host=1, so runs still work)"
                )
        if f.clock_skew is not None:
            row.clock = f"{f.clock_skew:+.2f}s"
            if abs(f.clock_skew) > MAX_CLOCK_SKEW:
                row.warnings.append(
                    f"node {spec.name}: clock is {f.clock_skew:+.1f} s off (logs and timeouts drift)"
                )
        row.blocking.extend(f.problems)
        rows.append(row)
    return rows


def doctor(
    specs: list[NodeSpec],
    image: str,
    port: int | None = None,
    gpus: str | None = None,
    host_ipc: bool = False,
) -> list[Row]:
    """Check every node (in parallel) and return one row per node."""
    nodes = [Node(s, rank) for rank, s in enumerate(specs)]
    try:
        reach = parallel(Node.connect, nodes)
        up = [n for n, r in zip(nodes, reach, strict=True) if not isinstance(r, BaseException)]
        pf, endpoint_error = None, None
        if up:
            try:
                endpoint = endpoint_address(specs)
            except FglError as exc:
                endpoint, endpoint_error = "", str(exc)
            pf = gather(
                up,
                image,
                gpus_flag=gpus,
                port=port,
                endpoint=endpoint,
                strict=False,
                probe=bool(endpoint),
            )
        rows = rows_from(specs, reach, pf, port, host_ipc)
        if endpoint_error:
            rows[0].blocking.append(f"node 0: {endpoint_error}")
        return rows
    finally:
        for n in nodes:
            n.close()
