"""A run of fgl: one owner for its id, its record, its nodes and the containers it has on them.

``fgl up``, ``fgl run`` and ``fgl serve`` create a :class:`Run` and record it; ``fgl down``,
``fgl status``, ``fgl logs`` and ``fgl ps`` find one (by the record in the runs directory, or by
``--nodes``) and act on its containers on every node at once.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from docker.models.containers import Container

from fgl import __version__
from fgl.engine import Node, parallel, raise_first
from fgl.errors import FglError
from fgl.inventory import NodeSpec
from fgl.rendezvous import new_run_id
from fgl.runs import RunDir, spec_record

if TYPE_CHECKING:
    from fgl.node_options import Targets

T = TypeVar("T")

ROLES = ("train", "run", "serve")
"""Container roles that carry a run's work (probe containers do not)."""


class Run:
    """A run's id and kind, its run directory, and its nodes (ranked as started)."""

    def __init__(
        self, run_id: str, specs: list[NodeSpec], kind: str = "up", root: Path | None = None
    ):
        self.id = run_id
        self.kind = kind
        self.dir = RunDir(run_id, root)
        self.nodes = [Node(spec, rank) for rank, spec in enumerate(specs)]

    # ------------------------------------------------------------ creating and finding runs

    @classmethod
    def new(cls, kind: str, specs: list[NodeSpec], run_id: str | None = None) -> Run:
        """A new run (not recorded until :meth:`record`)."""
        return cls(run_id or new_run_id(), specs, kind)

    @classmethod
    def find(cls, run_id: str, targets: Targets) -> Run:
        """Run ``run_id``: on ``--nodes`` when given, else on the nodes its record names, else on
        the inventory's nodes."""
        run_dir = RunDir(run_id)
        record = run_dir.record() if run_dir.exists() else {}
        kind = record.get("kind", "up")
        if targets.nodes:
            return cls(run_id, targets.specs(), kind)
        if record:
            return cls(run_id, targets.resolve(run_dir.node_specs()), kind)
        inventory = targets.inventory
        if inventory and inventory.nodes:
            return cls(run_id, targets.specs(), kind)
        raise FglError(f"no record of {run_id} here; pass --nodes to say where its containers are")

    def record(self, **fields: Any) -> None:
        """Write ``run.json``: who started what, where (``nodes`` entries are merged per rank)."""
        per_node = fields.pop("nodes", [{} for _ in self.nodes])
        self.dir.create()
        self.dir.write_record(
            {
                "run_id": self.id,
                "kind": self.kind,
                "fgl_version": __version__,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "launcher": socket.gethostname(),
                "fgl_pid": os.getpid(),
                **fields,
                "nodes": [
                    {"rank": node.rank, "spec": spec_record(node.spec), **extra}
                    for node, extra in zip(self.nodes, per_node, strict=True)
                ],
            }
        )

    # ------------------------------------------------------------ the nodes

    def connect(self) -> Run:
        """Connect every node now (one error lists every unreachable node)."""
        raise_first(parallel(Node.connect, self.nodes))
        return self

    def each(self, fn: Callable[[Node], T]) -> list[tuple[Node, T | BaseException]]:
        """``fn`` on every node at once; (node, result or the exception it raised)."""
        return list(zip(self.nodes, parallel(fn, self.nodes), strict=True))

    def containers(
        self, role: str | None = None
    ) -> list[tuple[Node, list[Container] | BaseException]]:
        """The run's containers on each node."""
        return self.each(lambda node: node.containers(self.id, role=role))

    def remove(self, grace: float = 5.0) -> list[tuple[Node, list[str] | BaseException]]:
        """Stop and remove the run's containers on every node (idempotent)."""
        return self.each(lambda node: node.remove_run(self.id, grace))

    def workers(self) -> list[tuple[Node, Container]]:
        """The containers doing the run's work (not probes), on the nodes that answered."""
        return [
            (node, container)
            for node, found in self.containers()
            if not isinstance(found, BaseException)
            for container in found
            if (container.labels or {}).get("fgl.role") in ROLES
        ]

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def containers_on(
    specs: list[NodeSpec], run_id: str | None = None
) -> list[tuple[Node, list[Container] | BaseException]]:
    """Every fgl container (of every run, or of ``run_id``) on each node."""
    nodes = [Node(spec, rank) for rank, spec in enumerate(specs)]
    try:
        return list(zip(nodes, parallel(lambda n: n.containers(run_id), nodes), strict=True))
    finally:
        for node in nodes:
            node.close()
