"""The config graph: containers that remember where each entry was set, and nodes that build objects.

A parsed config is plain Python data (`ConfigMapping`, `ConfigList`, tuples, scalars) with graph nodes in it:

* `SingletonNode` (`!singleton`, `!call`, and `!dict`/`!list`/`!tuple`/`!dlist`): called once per build;
  every reference gets the same object;
* `FactoryNode` (`!factory`): called anew wherever it appears;
* `PartialNode` (`!partial`, `!lambda`): builds a callable that appends positional and merges keyword args;
* `MetaNode` (`!meta`): called with its arguments as raw graph nodes;
* `VarNode` (`!var`): a value supplied when the graph is built.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from forgather.config.origin import Origin, Provenance

RESERVED_KWARGS = ("submodule_searchpath", "latent_args")


class ConfigMapping(dict):
    """A mapping that records, for each key, where it was set and which earlier values it replaced."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.provenance: dict[Any, Provenance] = {}
        self.origin: Origin | None = None

    def set(self, key: Any, value: Any, origin: Origin | None) -> None:
        """Set `key`, recording the previous value (if any) as overridden."""
        previous = self.provenance.get(key)
        record = Provenance(origin)
        if key in self:
            if previous is not None:
                record.overrode = [
                    *previous.overrode,
                    (previous.origin, dict.__getitem__(self, key)),
                ]
            else:
                record.overrode = [(None, dict.__getitem__(self, key))]
        self[key] = value
        self.provenance[key] = record

    def delete(self, key: Any) -> None:
        """Remove `key` and its provenance."""
        del self[key]
        self.provenance.pop(key, None)


class ConfigList(list):
    """A list that records where each item was set."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.origins: list[Origin | None] = [None] * len(self)
        self.origin: Origin | None = None


class Node:
    """Base of graph nodes; `origin` is where the node's tag was written."""

    origin: Origin | None = None

    def children(self) -> Iterator[Any]:
        return iter(())


class VarNode(Node):
    """`!var NAME` or `!var {name: NAME, default: VALUE}`: a value given at build time."""

    def __init__(self, name: str, default: Any = None, has_default: bool = False, origin=None):
        self.name = name
        self.default = default
        self.has_default = has_default
        self.origin = origin

    def children(self) -> Iterator[Any]:
        if self.has_default:
            yield self.default

    def __repr__(self) -> str:
        extra = f", default={self.default!r}" if self.has_default else ""
        return f"VarNode({self.name!r}{extra})"


class CallableNode(Node):
    """A call of the object that `spec` names, with positional `args` and keyword `kwargs`."""

    tag = "call"
    written_tag: str | None = None  # the tag as written (`call` for `!call:`), for messages

    def __init__(
        self,
        spec: str,
        args: ConfigList | None = None,
        kwargs: ConfigMapping | None = None,
        name: str | None = None,
        origin: Origin | None = None,
        submodule_searchpath: Any = None,
        latent_args: Any = None,
    ):
        self.spec = spec
        self.args = args if args is not None else ConfigList()
        self.kwargs = kwargs if kwargs is not None else ConfigMapping()
        self.name = name
        self.origin = origin
        self.submodule_searchpath = submodule_searchpath
        self.latent_args = latent_args

    def children(self) -> Iterator[Any]:
        yield from self.args
        yield from self.kwargs.values()
        if self.latent_args is not None:
            yield self.latent_args

    def __repr__(self) -> str:
        name = f"@{self.name}" if self.name else ""
        return f"{type(self).__name__}({self.spec!r}{name}, args={list(self.args)!r}, kwargs={dict(self.kwargs)!r})"


class SingletonNode(CallableNode):
    """Called once per build; every reference receives the same object."""

    tag = "singleton"


class FactoryNode(CallableNode):
    """Called anew at every place it is used."""

    tag = "factory"


class PartialNode(CallableNode):
    """Builds a callable; positional args given later are appended and keyword args merged."""

    tag = "partial"


class MetaNode(SingletonNode):
    """Called once with its arguments as unbuilt graph nodes."""

    tag = "meta"


class DListNode(SingletonNode):
    """`!dlist`: a mapping whose non-null values, in key order, become a list (keys allow overrides)."""

    tag = "dlist"

    def __init__(self, items: ConfigMapping, name: str | None = None, origin=None):
        super().__init__("named_list", ConfigList(), items, name, origin)

    @property
    def items(self) -> ConfigMapping:
        return self.kwargs

    def values_list(self) -> list[Any]:
        return [value for value in self.kwargs.values() if value is not None]

    def children(self) -> Iterator[Any]:
        yield from self.values_list()


CONTAINER_SPECS = {"named_dict": "dict", "named_list": "list", "named_tuple": "tuple"}


def iter_nodes(value: Any) -> Iterator[Node]:
    """Every node reachable from `value`, each once, parents before children."""
    seen: set[int] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Node):
            if id(item) in seen:
                continue
            seen.add(id(item))
            yield item
            stack.extend(reversed(list(item.children())))
        elif isinstance(item, dict):
            if id(item) in seen:
                continue
            seen.add(id(item))
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list | tuple):
            if id(item) in seen:
                continue
            seen.add(id(item))
            stack.extend(reversed(list(item)))
