"""A loaded config: its rendered text, its graph, and access to targets and key paths."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from forgather.config import errors
from forgather.config.environment import ConfigEnvironment, Rendered
from forgather.config.materialize import Builder
from forgather.config.nodes import CallableNode, ConfigList, ConfigMapping, DListNode, VarNode
from forgather.config.origin import Origin, Provenance
from forgather.config.yaml_graph import parse_graph


@dataclass
class Config:
    """A parsed config: the graph (root value) and the rendered text it came from."""

    graph: Any
    rendered: Rendered
    name: str = "<config>"
    variables: dict[str, Any] = field(default_factory=dict)

    @property
    def pp_config(self) -> str:
        """The rendered (preprocessed) config text."""
        return self.rendered.text

    @property
    def targets(self) -> ConfigMapping:
        """Top-level keys that can be built; `.name` keys only hold anchors and are left out."""
        if not isinstance(self.graph, dict):
            return ConfigMapping()
        result = ConfigMapping()
        for key, value in self.graph.items():
            if isinstance(key, str) and key.startswith("."):
                continue
            result[key] = value
            if key in self.graph.provenance:
                result.provenance[key] = self.graph.provenance[key]
        return result

    def target(self, name: str) -> Any:
        """The graph of one target."""
        targets = self.targets
        if name not in targets:
            available = ", ".join(map(str, targets)) or "none"
            raise errors.TargetNotFoundError(f"{name!r} (targets: {available})", key=name)
        return targets[name]

    def builder(self, **context_vars: Any) -> Builder:
        """A fresh build that knows `pp_config`, `config_provenance` and the given `!var` values."""
        lazy = (
            {}
            if "config_provenance" in context_vars
            else {"config_provenance": self.provenance_map}
        )
        return Builder({"pp_config": self.pp_config, **context_vars}, lazy_vars=lazy)

    def provenance_map(self) -> dict[str, Any]:
        """For every scalar value of the targets: where it was set and what it overrode (JSON-ready)."""
        result: dict[str, Any] = {}
        for path, value, container, key in walk(self.targets):
            if isinstance(value, dict | list | tuple | CallableNode | VarNode):
                continue
            if value is None and isinstance(container, DListNode):
                continue  # a deleted (or placeholder) `!dlist` entry is not a value
            record = provenance_of(container, key)
            entry: dict[str, Any] = {
                "value": value,
                "set_at": str(record.origin) if record and record.origin else None,
            }
            if record and record.overrode:
                entry["overrode"] = [
                    {"set_at": str(origin) if origin else None, "value": old}
                    for origin, old in record.overrode
                ]
            result[path] = entry
        return result

    def build(self, target: str = "main", **context_vars: Any) -> Any:
        """Build one target in a fresh build (arguments are checked before anything is built)."""
        graph = self.target(target)
        check_before_build(graph, context_vars, paths_root=self.targets)
        return self.builder(**context_vars).build(graph)

    def lookup(self, path: str) -> tuple[Any, Provenance | None]:
        """The value at a dotted key path and where it was set."""
        container, key = resolve_path(self.graph, path)
        return child(container, key), provenance_of(container, key)


def load_config(env: ConfigEnvironment, template: str, **variables: Any) -> Config:
    """Render template `template` with Jinja `variables` and parse it into a `Config`."""
    rendered = env.render(template, **variables)
    graph = parse_graph(rendered.text, rendered, source=template)
    return Config(graph, rendered, template, dict(variables))


def load_config_string(
    text: str, searchpath=(), name: str = "<string>", **variables: Any
) -> Config:
    """Render and parse config `text` given directly (it may extend templates on `searchpath`)."""
    env = ConfigEnvironment(searchpath)
    env.add_template(name, text)
    return load_config(env, name, **variables)


# ---- key paths -------------------------------------------------------------------------------


def children(value: Any) -> Iterator[tuple[Any, Any]]:
    """The (key, child) pairs a key path can step into."""
    if isinstance(value, DListNode):
        yield from value.items.items()
    elif isinstance(value, CallableNode):
        yield from enumerate(value.args)
        yield from value.kwargs.items()
    elif isinstance(value, VarNode):
        if value.has_default:
            yield "default", value.default
    elif isinstance(value, dict):
        yield from value.items()
    elif isinstance(value, list | tuple):
        yield from enumerate(value)


def _key_for(container: Any, part: str) -> Any:
    if isinstance(container, DListNode):
        return _mapping_key(container.items, part)
    if isinstance(container, CallableNode):
        positional = re.fullmatch(r"(?:arg)?([0-9]+)", part)
        if positional:
            index = int(positional.group(1))
            if index < len(container.args):
                return index
            return None
        return _mapping_key(container.kwargs, part)
    if isinstance(container, VarNode):
        return "default" if part == "default" and container.has_default else None
    if isinstance(container, dict):
        return _mapping_key(container, part)
    if isinstance(container, list | tuple) and re.fullmatch(r"-?[0-9]+", part):
        index = int(part)
        return index if -len(container) <= index < len(container) else None
    return None


def _mapping_key(mapping: Mapping, part: str) -> Any:
    if part in mapping:
        return part
    for key in mapping:  # YAML keys may be ints, bools or null
        if str(key) == part or (key is None and part in ("null", "~")):
            return key
    return None


def child(container: Any, key: Any) -> Any:
    if isinstance(container, DListNode):
        return container.items[key]
    if isinstance(container, CallableNode):
        return container.args[key] if isinstance(key, int) else container.kwargs[key]
    if isinstance(container, VarNode):
        return container.default
    return container[key]


def provenance_of(container: Any, key: Any) -> Provenance | None:
    if isinstance(container, DListNode):
        container = container.items
    elif isinstance(container, CallableNode):
        if isinstance(key, int):
            origins = container.args.origins if isinstance(container.args, ConfigList) else []
            origin = origins[key] if key < len(origins) else container.origin
            return Provenance(origin)
        container = container.kwargs
    if isinstance(container, ConfigMapping):
        return container.provenance.get(key) or Provenance(container.origin)
    if isinstance(container, ConfigList):
        return Provenance(
            container.origins[key] if key < len(container.origins) else container.origin
        )
    value = getattr(container, "origin", None)
    return Provenance(value if isinstance(value, Origin) else None)


def resolve_path(graph: Any, path: str) -> tuple[Any, Any]:
    """The container holding the last part of `path`, and that part's key; error if it matches nothing."""
    parts = path.split(".")
    if not path or not all(parts):
        raise errors.OverrideError(f"{path!r} is not a dotted key path", key=path)
    container = graph
    where: Origin | None = None  # where the value walked into was set (scalars have no origin)
    for depth, part in enumerate(parts):
        key = _key_for(container, part)
        if key is None:
            walked = ".".join(parts[:depth]) or "the config root"
            options = [str(k) for k, _ in children(container)]
            hint = f"; keys there: {', '.join(options[:20])}" if options else ""
            raise errors.OverrideError(
                f"{path!r} matches nothing: {walked} has no {part!r}{hint}",
                getattr(container, "origin", None) or where,
                key=path,
            )
        if depth == len(parts) - 1:
            return container, key
        provenance = provenance_of(container, key)
        where = provenance.origin if provenance else None
        container = child(container, key)
    raise AssertionError("unreachable")


def walk(value: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any, Any]]:
    """Every (path, value, container, key) below `value`, parents first; shared nodes are visited once."""
    seen: set[int] = set()

    def visit(node: Any, path: str) -> Iterator[tuple[str, Any, Any, Any]]:
        for key, item in children(node):
            item_path = f"{path}.{key}" if path else str(key)
            yield item_path, item, node, key
            if isinstance(item, dict | list | tuple | CallableNode | VarNode):
                if id(item) in seen:
                    continue
                seen.add(id(item))
                yield from visit(item, item_path)

    yield from visit(value, prefix)


def check_before_build(
    graph: Any, context_vars: Mapping[str, Any] | None = None, paths_root: Any = None
) -> None:
    """Raise the first argument problem (unknown or missing keyword) in `graph` before anything is built.

    Import problems are left to the build itself (a file a spec names may be written by an earlier step
    of the same build), and so are `!var` values (the build reports them where they are used).
    """
    from forgather.config.validate import validate_graph

    for problem in validate_graph(graph, paths_root=paths_root):
        if isinstance(problem, errors.ArgumentError):
            raise problem
