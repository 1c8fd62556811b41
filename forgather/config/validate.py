"""Check a config graph without building it: import specs resolve, arguments bind, `!var`s have values.

`validate_graph(graph)` imports what the tags name (which runs module-level code, as any import does) but
calls nothing: no object of the config is constructed. Every problem found is returned as a `ConfigError`
naming the template line of the node (and, as `.key`, the node's key path), in graph order.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Iterator
from typing import Any

from forgather.config import errors
from forgather.config.materialize import describe
from forgather.config.nodes import (
    CallableNode,
    DListNode,
    Node,
    PartialNode,
    VarNode,
    iter_nodes,
)
from forgather.config.specs import SPEC_RE, is_file_spec, resolve

ALWAYS_KNOWN_VARS = frozenset({"pp_config", "config_provenance"})


def validate_graph(
    value: Any, known_vars: set[str] | None = None, paths_root: Any = None
) -> list[errors.ConfigError]:
    """Every problem in `value` (a graph or part of one) that would make building it fail.

    Checks, for every node reachable from `value`: its import spec resolves to a callable (relative
    `.module:Name` specs, valid only in generated code, are skipped) and its arguments bind to that
    callable's signature (a `!partial` only needs its given arguments to fit; a node with `latent_args`
    may leave required arguments to them). With `known_vars` (the `!var` values the build will be given;
    `pp_config` is always given), every `!var` with no default and no value is reported too.
    Nothing is constructed; problems are returned, never raised.
    """
    paths = _node_paths(value if paths_root is None else paths_root)
    problems: list[errors.ConfigError] = []
    seen: set[tuple[type, str, Any]] = set()
    known = None if known_vars is None else set(known_vars) | ALWAYS_KNOWN_VARS
    for node in iter_nodes(value):
        if isinstance(node, VarNode):
            found = _check_var(node, known)
        elif isinstance(node, CallableNode):
            found = _check_callable(node)
        else:
            found = []
        for problem in found:
            identity = (type(problem), problem.message, problem.origin)
            if identity in seen:
                continue
            seen.add(identity)
            if problem.key is None:
                problem.key = paths.get(id(node))
            problems.append(problem)
    return problems


def _check_var(node: VarNode, known: set[str] | None) -> list[errors.ConfigError]:
    if known is None or node.has_default or node.name in known:
        return []
    given = ", ".join(sorted(known - ALWAYS_KNOWN_VARS)) or "none"
    return [
        errors.UnboundVarError(
            f"!var {node.name} has no value and no default (values given: {given})", node.origin
        )
    ]


def _check_callable(node: CallableNode) -> list[errors.ConfigError]:
    if isinstance(node, DListNode):
        return []  # built as a list of its values: nothing to import or bind
    match = SPEC_RE.match(node.spec)
    if match and match.group("module").startswith(".") and not is_file_spec(match.group("module")):
        return []  # relative import: only meaningful inside generated code
    searchpath, static = _static_searchpath(node.submodule_searchpath)
    if not static and ":" in node.spec and is_file_spec(node.spec.split(":", 1)[0]):
        return []  # the file's own imports depend on a search path known only at build time
    try:
        function = resolve(node.spec, searchpath, node.origin)
    except errors.ConfigError as error:
        if error.origin is None:
            error.origin = node.origin
        return [error]
    except Exception as error:  # anything else an import can raise is still the config's problem
        return [
            errors.ImportSpecError(
                f"{node.spec!r}: importing failed: {type(error).__name__}: {error}", node.origin
            )
        ]
    if not callable(function):
        return [
            errors.ImportSpecError(
                f"{node.spec!r} names a {type(function).__name__}, not a callable", node.origin
            )
        ]
    problems: list[errors.ConfigError] = []
    kwargs: dict[Any, Any] = dict(node.kwargs)
    latent = node.latent_args
    if latent is not None and not isinstance(latent, Node):
        if isinstance(latent, dict):
            for key, item in latent.items():
                kwargs.setdefault(key, item)
        else:
            problems.append(
                errors.ArgumentError(
                    f"{describe(node)}: latent_args must be a mapping, not {type(latent).__name__}",
                    node.origin,
                )
            )
    # A partial gets more arguments when it is called; latent args arrive at build time.
    partial = isinstance(node, PartialNode) or latent is not None
    problem = _bind(function, list(node.args), kwargs, node, partial)
    if problem is not None:
        problems.append(problem)
    return problems


def _bind(
    function: Any, args: list[Any], kwargs: dict[Any, Any], node: CallableNode, partial: bool
) -> errors.ArgumentError | None:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return None  # builtins without a signature: only the call itself can tell
    try:
        if partial:
            signature.bind_partial(*args, **kwargs)
        else:
            signature.bind(*args, **kwargs)
    except TypeError as error:
        params = ", ".join(
            name
            for name, p in signature.parameters.items()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        )
        message = f"{describe(node)}: {error} (it takes: {params or 'no named parameters'})"
        origin = node.origin
        unexpected = re.search(r"unexpected keyword argument '([^']+)'", str(error))
        if unexpected:
            name = unexpected.group(1)
            close = difflib.get_close_matches(name, list(signature.parameters), n=1)
            if close:
                message = (
                    f"{describe(node)}: unknown argument {name!r} (did you mean {close[0]!r}?)"
                )
            record = (
                node.kwargs.provenance.get(name) if hasattr(node.kwargs, "provenance") else None
            )
            if record is not None and record.origin is not None:
                origin = record.origin  # where the unknown key was written (a line, or an override)
        return errors.ArgumentError(message, origin)
    return None


def _static_searchpath(value: Any) -> tuple[list[str] | None, bool]:
    """`submodule_searchpath` as a list of directories, and whether it is known without building."""
    if value is None:
        return None, True
    if isinstance(value, VarNode):
        if not value.has_default:
            return None, False
        value = value.default
    if isinstance(value, str):
        return [value], True
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return list(value), True
    return None, False


def _children(value: Any) -> Iterator[tuple[Any, Any]]:
    """(key, child) pairs in the order `iter_nodes` visits them."""
    if isinstance(value, DListNode):
        yield from ((key, item) for key, item in value.items.items() if item is not None)
    elif isinstance(value, CallableNode):
        yield from enumerate(value.args)
        yield from value.kwargs.items()
        if value.latent_args is not None:
            yield "latent_args", value.latent_args
    elif isinstance(value, VarNode):
        if value.has_default:
            yield "default", value.default
    elif isinstance(value, dict):
        yield from value.items()
    elif isinstance(value, list | tuple):
        yield from enumerate(value)


def _node_paths(value: Any) -> dict[int, str]:
    """The first key path (in graph order) at which each node appears."""
    paths: dict[int, str] = {}
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if not isinstance(item, Node | dict | list | tuple) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, Node) and path:
            paths[id(item)] = path
        entries = [(f"{path}.{key}" if path else str(key), child) for key, child in _children(item)]
        stack.extend(reversed(entries))
    return paths


__all__ = ["validate_graph"]
