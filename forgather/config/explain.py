"""Where config values come from (`explain`), and how two configs differ (`diff_configs`)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from forgather.config.graph import Config, provenance_of, walk
from forgather.config.nodes import CallableNode, DListNode, VarNode
from forgather.config.origin import Origin
from forgather.config.yaml_encoder import to_flow, to_yaml

ELLIPSIS = "…"


# ---- explain ---------------------------------------------------------------------------------


@dataclass
class Explanation:
    """The value at a key path, where it was set, and the earlier values it replaced (oldest first)."""

    path: str
    value: Any
    origin: Origin | None
    overrode: list[tuple[Origin | None, Any]] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)


def explain(config: Config, path: str, templates: list[str] | None = None) -> Explanation:
    """Explain the value at dotted key `path`; `templates` is the template chain, passed through.

    A path that matches nothing raises the `OverrideError` of `resolve_path`.
    """
    value, provenance = config.lookup(path)
    origin = provenance.origin if provenance is not None else None
    overrode = list(provenance.overrode) if provenance is not None else []
    return Explanation(path, value, origin, overrode, list(templates or []))


def template_chain(environment: Any) -> list[str]:
    """The template names a `ConfigEnvironment` loaded, in order, each once."""
    names: list[str] = []
    for name in environment.config_loader.loaded:
        if name not in names:
            names.append(name)
    return names


def format_origin(origin: Origin | None) -> str:
    """`file:line` for a template line, the override as typed for an override, `?` when unknown."""
    if origin is None:
        return "?"
    if origin.kind != "template" and origin.text:
        return origin.text
    file = origin.file
    if os.path.isabs(file):
        try:
            relative = os.path.relpath(file)
        except ValueError:
            relative = file
        if not relative.startswith(".."):
            file = relative
    return f"{file}:{origin.line}" if origin.line else file


def format_value(value: Any, width: int = 80) -> str:
    """`value` as one line of config YAML, cut to `width` characters with `…`."""
    try:
        text = to_flow(value)
    except Exception:  # a value YAML cannot write at all: show what Python shows
        text = repr(value)
    text = " ".join(text.splitlines())
    if width > 0 and len(text) > width:
        text = text[: max(width - 1, 0)] + ELLIPSIS
    return text


def render_explanation(expl: Explanation) -> str:
    """A short text: the value, where it was set, what it replaced and the templates involved."""
    lines = [f"{expl.path} = {format_value(expl.value, 100)}"]
    if _is_structured(expl.value):
        block = to_yaml(expl.value).rstrip("\n").splitlines()
        if len(block) > 1:
            shown = block[:30] + ([ELLIPSIS] if len(block) > 30 else [])
            lines.extend("    " + line for line in shown)
    lines.append(f"  set at: {format_origin(expl.origin)}")
    if expl.overrode:
        lines.append("  replaced (oldest first):")
        for origin, old in expl.overrode:
            lines.append(f"    {format_value(old, 60)}  (set at {format_origin(origin)})")
    if expl.templates:
        lines.append(f"  templates: {' -> '.join(expl.templates)}")
    return "\n".join(lines)


def _is_structured(value: Any) -> bool:
    return isinstance(value, CallableNode | VarNode | dict | list | tuple)


# ---- diff ------------------------------------------------------------------------------------


@dataclass
class DiffEntry:
    """One key path whose value differs between configs A and B."""

    path: str
    status: str  # "changed" | "added" | "removed"
    a_value: Any
    a_origin: Origin | None
    b_value: Any
    b_origin: Origin | None


_MISSING = object()


def _encoded(value: Any) -> str:
    try:
        return to_flow(value)
    except Exception:
        return repr(value)


def _origin(container: Any, key: Any) -> Origin | None:
    if container is None:
        return None
    try:
        provenance = provenance_of(container, key)
    except Exception:
        return None
    return provenance.origin if provenance is not None else None


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


class _Differ:
    def __init__(self) -> None:
        self.entries: list[DiffEntry] = []
        self.seen: set[tuple[int, int]] = set()

    def leaf(self, path: str, status: str, a: Any, a_at: tuple, b: Any, b_at: tuple) -> None:
        self.entries.append(
            DiffEntry(
                path,
                status,
                None if a is _MISSING else a,
                _origin(*a_at) if a is not _MISSING else None,
                None if b is _MISSING else b,
                _origin(*b_at) if b is not _MISSING else None,
            )
        )

    def mappings(
        self, path: str, a: Any, b: Any, a_parent: Any = None, b_parent: Any = None
    ) -> None:
        """Compare two key -> value mappings; `*_parent` is the container provenance is read from."""
        a_parent = a if a_parent is None else a_parent
        b_parent = b if b_parent is None else b_parent
        for key, a_item in a.items():
            if key in b:
                self.compare(_join(path, key), a_item, b[key], (a_parent, key), (b_parent, key))
            else:
                self.leaf(_join(path, key), "removed", a_item, (a_parent, key), _MISSING, ())
        for key, b_item in b.items():
            if key not in a:
                self.leaf(_join(path, key), "added", _MISSING, (), b_item, (b_parent, key))

    def sequences(
        self, path: str, a: Any, b: Any, a_parent: Any = None, b_parent: Any = None
    ) -> None:
        a_parent = a if a_parent is None else a_parent
        b_parent = b if b_parent is None else b_parent
        for index in range(max(len(a), len(b))):
            item_path = _join(path, index)
            if index >= len(b):
                self.leaf(item_path, "removed", a[index], (a_parent, index), _MISSING, ())
            elif index >= len(a):
                self.leaf(item_path, "added", _MISSING, (), b[index], (b_parent, index))
            else:
                self.compare(item_path, a[index], b[index], (a_parent, index), (b_parent, index))

    def compare(self, path: str, a: Any, b: Any, a_at: tuple, b_at: tuple) -> None:
        if isinstance(a, CallableNode | VarNode | dict | list | tuple):
            pair = (id(a), id(b))
            if pair in self.seen:
                return  # a shared node: compared where it first appeared
            self.seen.add(pair)
        if isinstance(a, CallableNode) and isinstance(b, CallableNode):
            if (type(a), a.spec, a.name) != (type(b), b.spec, b.name):
                self.leaf(path, "changed", a, a_at, b, b_at)
            elif isinstance(a, DListNode):
                self.mappings(path, a.items, b.items)
            else:
                self.sequences(path, a.args, b.args, a, b)
                self.mappings(path, a.kwargs, b.kwargs, a, b)
                for name in ("latent_args", "submodule_searchpath"):
                    a_extra, b_extra = getattr(a, name), getattr(b, name)
                    if a_extra is None and b_extra is None:
                        continue
                    if _encoded(a_extra) != _encoded(b_extra):
                        status = (
                            "added"
                            if a_extra is None
                            else "removed"
                            if b_extra is None
                            else "changed"
                        )
                        self.leaf(
                            _join(path, name),
                            status,
                            _MISSING if a_extra is None else a_extra,
                            (a, name),
                            _MISSING if b_extra is None else b_extra,
                            (b, name),
                        )
        elif isinstance(a, VarNode) and isinstance(b, VarNode):
            if (a.name, a.has_default) != (b.name, b.has_default):
                self.leaf(path, "changed", a, a_at, b, b_at)
            elif a.has_default:
                self.compare(
                    _join(path, "default"), a.default, b.default, (a, "default"), (b, "default")
                )
        elif isinstance(a, dict) and isinstance(b, dict):
            self.mappings(path, a, b)
        elif (isinstance(a, list) and isinstance(b, list)) or (
            isinstance(a, tuple) and isinstance(b, tuple)
        ):
            self.sequences(path, a, b)
        elif _encoded(a) != _encoded(b):
            self.leaf(path, "changed", a, a_at, b, b_at)


def diff_configs(a: Config, b: Config) -> list[DiffEntry]:
    """Key paths whose values differ between the targets of `a` and `b` (dot keys left out).

    The deepest differing paths are reported: entries of `a` in its graph order, then paths only `b` has,
    in `b`'s order. Identical configs give `[]`.
    """
    differ = _Differ()
    differ.mappings("", a.targets, b.targets)
    present = [entry for entry in differ.entries if entry.status != "added"]
    added = [entry for entry in differ.entries if entry.status == "added"]
    order = {path: index for index, path in enumerate(_paths(b.targets))}
    added.sort(key=lambda entry: order.get(entry.path, len(order)))
    return present + added


def _paths(value: Any) -> Iterable[str]:
    for path, *_ in walk(value):
        yield path


__all__ = [
    "DiffEntry",
    "Explanation",
    "diff_configs",
    "explain",
    "format_origin",
    "format_value",
    "render_explanation",
    "template_chain",
]
