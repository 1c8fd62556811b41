"""Command-line overrides: `trainer_args.max_steps=100` replaces one value in a loaded config graph.

The value is YAML read by YAML 1.2's core schema, as people type on command lines: `100` is an int,
`1e-3` a float, `true`/`false` booleans, `null` None, `no`/`off`/`yes`/`on` strings (so
`eval_strategy=no` means "no"), `[1, 2]` a list, `!call:math:sqrt [4]` a node. A path must name a
value that exists; prefix it with `+` to add a new key (`+trainer_args.new_key=1`) and with `~` to delete one
(`~callbacks.tb`). Every override lands in the graph's provenance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from forgather.config import errors
from forgather.config.graph import child, resolve_path
from forgather.config.nodes import CallableNode, ConfigList, ConfigMapping, DListNode, VarNode
from forgather.config.origin import Origin
from forgather.config.yaml_graph import CoreSchemaLoader, parse_graph

OVERRIDE_SOURCE = "<command line>"


@dataclass(frozen=True)
class Override:
    """One `path=value` override as typed."""

    path: str
    value_text: str = ""
    mode: str = "set"  # "set" | "add" | "delete"
    source: str = OVERRIDE_SOURCE

    @property
    def text(self) -> str:
        prefix = {"set": "", "add": "+", "delete": "~"}[self.mode]
        return f"{prefix}{self.path}" + ("" if self.mode == "delete" else f"={self.value_text}")

    def origin(self) -> Origin:
        return Origin(self.source, 0, None, kind="override", text=self.text)


def is_override(token: str) -> bool:
    """Whether a command-line token is a `path=value` override (rather than a flag or a name)."""
    if token.startswith("-"):
        return False
    if token.startswith("~") and "=" not in token:
        return True
    head = token.split("=", 1)[0].lstrip("+")
    return "=" in token and bool(head) and " " not in head


def parse_override(token: str, source: str = OVERRIDE_SOURCE) -> Override:
    """Parse `path=value`, `+path=value` or `~path`."""
    if token.startswith("~"):
        if "=" in token:
            raise errors.OverrideError(
                f"{token!r}: '~path' deletes a key and takes no value", key=token
            )
        return Override(token[1:], mode="delete", source=source)
    if "=" not in token:
        raise errors.OverrideError(f"{token!r} is not of the form key.path=value", key=token)
    path, value = token.split("=", 1)
    mode = "add" if path.startswith("+") else "set"
    return Override(path.lstrip("+"), value, mode, source)


def _value(override: Override) -> Any:
    if override.value_text.strip() == "":
        return ""
    try:
        return parse_graph(override.value_text, source=override.text, loader_class=CoreSchemaLoader)
    except errors.ConfigError as error:
        raise errors.OverrideError(
            f"{override.text!r}: {error.message}", override.origin(), key=override.path
        ) from None


def _set(container: Any, key: Any, value: Any, origin: Origin) -> None:
    if isinstance(container, DListNode):
        container = container.items
    elif isinstance(container, CallableNode):
        if isinstance(key, int):
            container.args[key] = value
            if isinstance(container.args, ConfigList) and key < len(container.args.origins):
                container.args.origins[key] = origin
            return
        container = container.kwargs
    elif isinstance(container, VarNode):
        container.default = value
        return
    if isinstance(container, ConfigMapping):
        container.set(key, value, origin)
    elif isinstance(container, ConfigList):
        container[key] = value
        container.origins[key] = origin
    elif isinstance(container, dict | list):
        container[key] = value
    else:
        raise errors.OverrideError(f"cannot set {key!r} inside a {type(container).__name__}")


def apply_override(graph: Any, override: Override) -> None:
    """Apply one override to `graph` in place."""
    origin = override.origin()
    if override.mode == "add":
        parent_path, _, leaf = override.path.rpartition(".")
        parent = graph
        if parent_path:
            container, key = resolve_path(graph, parent_path)
            parent = child(container, key)
        target = parent.items if isinstance(parent, DListNode) else parent
        target = target.kwargs if isinstance(target, CallableNode) else target
        if not isinstance(target, dict):
            raise errors.OverrideError(
                f"{override.text!r}: {parent_path} is not a mapping", key=override.path
            )
        if leaf in target:
            raise errors.OverrideError(
                f"{override.text!r}: {override.path} already exists; drop the '+' to replace it",
                key=override.path,
            )
        if isinstance(target, ConfigMapping):
            target.set(leaf, _value(override), origin)
        else:
            target[leaf] = _value(override)
        return
    container, key = resolve_path(graph, override.path)
    if override.mode == "delete":
        mapping = container.items if isinstance(container, DListNode) else container
        mapping = (
            mapping.kwargs
            if isinstance(mapping, CallableNode) and not isinstance(key, int)
            else mapping
        )
        if isinstance(mapping, ConfigMapping):
            mapping.delete(key)
        elif isinstance(mapping, dict):
            del mapping[key]
        else:
            raise errors.OverrideError(
                f"{override.text!r}: only mapping keys can be deleted", key=override.path
            )
        return
    _set(container, key, _value(override), origin)


def apply_overrides(graph: Any, overrides: list[Override | str]) -> None:
    """Apply overrides in order (later ones win)."""
    for item in overrides:
        apply_override(graph, parse_override(item) if isinstance(item, str) else item)
