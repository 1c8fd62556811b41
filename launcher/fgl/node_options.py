"""The node and SSH options every fgl command that reaches nodes takes, defined once.

``@node_options()`` adds ``--nodes/-n``, ``--inventory/-i``, ``--ssh-key`` and ``--ssh-config`` to a
Typer command (``@node_options(single=True)``: ``--node`` for one node, default ``localhost``) and
passes the command one :class:`Targets` that resolves them: the inventory, the node specs after
``~/.ssh/config``, or a recorded run.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from fgl.errors import FglError
from fgl.inventory import DEFAULT_SSH_CONFIG, Inventory, NodeSpec

if TYPE_CHECKING:
    from fgl.run import Run

F = TypeVar("F", bound=Callable[..., Any])

NodesOption = Annotated[
    str | None,
    typer.Option(
        "--nodes", "-n", help="Nodes as [user@]host[:port],… (localhost = this machine's engine)."
    ),
]
NodeOption = Annotated[str, typer.Option("--node", help="The node ([user@]host[:port]).")]
InventoryOption = Annotated[
    str | None,
    typer.Option("--inventory", "-i", help="Inventory file (default: ./fgl.yaml if present)."),
]
SshKeyOption = Annotated[
    str | None, typer.Option("--ssh-key", help="SSH private key (the SSH agent is used too).")
]
SshConfigOption = Annotated[
    str, typer.Option("--ssh-config", help="OpenSSH client config whose Host aliases apply.")
]


@dataclass
class Targets:
    """The nodes a command was pointed at, and how to reach them."""

    nodes: str | None = None
    inventory_path: str | None = None
    ssh_key: str | None = None
    ssh_config: str = str(DEFAULT_SSH_CONFIG)
    _inventory: Inventory | None = field(default=None, repr=False)
    _loaded: bool = field(default=False, repr=False)

    @property
    def inventory(self) -> Inventory | None:
        """The inventory (``--inventory``, else ./fgl.yaml), read once."""
        if not self._loaded:
            from fgl.inventory import find_inventory, load_inventory

            found = find_inventory(self.inventory_path)
            self._inventory = load_inventory(found) if found else None
            self._loaded = True
        return self._inventory

    def resolve(self, specs: list[NodeSpec]) -> list[NodeSpec]:
        """Specs after ``~/.ssh/config`` (host aliases, users, ports, keys) and ``--ssh-key``."""
        from fgl.inventory import resolve_nodes

        return resolve_nodes(specs, self.ssh_config, self.ssh_key)

    def specs(self, default_local: bool = False) -> list[NodeSpec]:
        """The nodes: ``--nodes``, else the inventory's (else localhost when ``default_local``)."""
        from fgl.inventory import parse_node_list, select_nodes

        inventory = self.inventory
        if not self.nodes and default_local and not (inventory and inventory.nodes):
            return self.resolve(parse_node_list("localhost"))
        return self.resolve(select_nodes(self.nodes, inventory))

    def one(self) -> NodeSpec:
        """The single node of a ``--node`` command."""
        return self.node(self.nodes or "localhost", "--node")

    def node(self, name: str, flag: str) -> NodeSpec:
        """One node named by ``flag`` (inventory details of a node of that name apply)."""
        from fgl.inventory import select_nodes

        specs = select_nodes(name, self.inventory)
        if len(specs) != 1:
            raise FglError(f"{flag} takes one node, got {len(specs)} ({name})")
        (spec,) = self.resolve(specs)
        return spec

    def run(self, run_id: str) -> Run:
        """Run ``run_id`` on these targets (see :meth:`fgl.run.Run.find`)."""
        from fgl.run import Run

        return Run.find(run_id, self)


def node_options(single: bool = False) -> Callable[[F], F]:
    """Give a command the node/SSH options; it receives them as ``targets: Targets``."""

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn, eval_str=True)
        kept = [p for p in signature.parameters.values() if p.name != "targets"]
        keyword = inspect.Parameter.KEYWORD_ONLY
        added = [
            inspect.Parameter(
                "nodes",
                keyword,
                default="localhost" if single else None,
                annotation=NodeOption if single else NodesOption,
            ),
            inspect.Parameter("inventory", keyword, default=None, annotation=InventoryOption),
            inspect.Parameter("ssh_key", keyword, default=None, annotation=SshKeyOption),
            inspect.Parameter(
                "ssh_config", keyword, default="~/.ssh/config", annotation=SshConfigOption
            ),
        ]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            targets = Targets(
                kwargs.pop("nodes"),
                kwargs.pop("inventory"),
                kwargs.pop("ssh_key"),
                kwargs.pop("ssh_config"),
            )
            return fn(*args, targets=targets, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=[*kept, *added])  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
