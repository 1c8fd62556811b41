"""Callables for `!meta` nodes: they receive their arguments as unbuilt config-graph nodes."""

from __future__ import annotations

from typing import Any


def describe_nodes(**nodes: Any) -> dict[str, str]:
    """Name the kind of each argument without building it: a tag's class name, or the value's type."""
    result = {}
    for key, node in nodes.items():
        spec = getattr(node, "spec", None)
        result[key] = f"{type(node).__name__}({spec})" if spec else type(node).__name__
    return result


def count_nodes(*nodes: Any) -> int:
    return len(nodes)
