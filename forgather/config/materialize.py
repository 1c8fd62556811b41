"""Build Python objects from a config graph.

A `Builder` is one build: singletons are shared within it and never beyond it, factories are called at every
use, partials become callables (one per build, like singletons) that share the build's singletons, and `!var`
values come from its context.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any

from forgather.config import errors
from forgather.config.nodes import (
    CallableNode,
    DListNode,
    FactoryNode,
    MetaNode,
    PartialNode,
    SingletonNode,
    VarNode,
)
from forgather.config.specs import resolve


def describe(node: CallableNode) -> str:
    """The node's tag as written in the config (e.g. `!call:math:sqrt@root`)."""
    tag = getattr(node, "written_tag", None) or node.tag
    return f"!{tag}:{node.spec}" + (f"@{node.name}" if node.name else "")


def check_arguments(
    function: Any, args: list[Any], kwargs: dict[str, Any], node: CallableNode
) -> None:
    """Bind arguments against the callable's signature; a clear error on unknown or missing ones."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return  # builtins without a signature: let the call itself decide
    try:
        signature.bind(*args, **kwargs)
    except TypeError as error:
        params = ", ".join(
            name
            for name, p in signature.parameters.items()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        )
        raise errors.ArgumentError(
            f"{describe(node)}: {error} (it takes: {params or 'no named parameters'})", node.origin
        ) from None


class BuiltPartial:
    """The callable a `!partial` builds: extra positional args are appended, keyword args merged."""

    def __init__(self, builder: Builder, node: PartialNode):
        self._builder = builder
        self._node = node

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._builder.call(self._node, extra_args=args, extra_kwargs=kwargs)

    @property
    def func(self) -> Any:
        return self._builder.resolve(self._node)

    @property
    def args(self) -> tuple[Any, ...]:
        """The positional arguments given in the config (as `functools.partial.args`)."""
        return tuple(self._builder.build(arg) for arg in self._node.args)

    @property
    def keywords(self) -> dict[str, Any]:
        """The keyword arguments given in the config (as `functools.partial.keywords`)."""
        return {key: self._builder.build(value) for key, value in self._node.kwargs.items()}

    @property
    def __signature__(self) -> inspect.Signature:
        """The parameters left to give, as for `functools.partial` (what `inspect.signature` reports):
        callers that look before they call (datasets' `map`, the trainer's factories) see the
        target's parameters, not `*args, **kwargs`."""
        node = self._node
        try:
            target = self.func
            bound = functools.partial(
                target, *([None] * len(node.args)), **dict.fromkeys(node.kwargs)
            )
            return inspect.signature(bound)
        except (TypeError, ValueError):  # no introspectable signature (a C builtin, a class...)
            return inspect.Signature(
                [
                    inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
                    inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
                ]
            )

    def __repr__(self) -> str:
        return f"<partial {self._node.spec}>"


class Builder:
    """One materialization of a config graph."""

    def __init__(
        self,
        context_vars: Mapping[str, Any] | None = None,
        check_args: bool = True,
        lazy_vars: Mapping[str, Callable[[], Any]] | None = None,
    ):
        self.context_vars = dict(context_vars or {})
        self.lazy_vars = dict(lazy_vars or {})  # `!var` values computed only if a config uses them
        self.check_args = check_args
        self._singletons: dict[int, Any] = {}
        self._keep: list[Any] = []  # keeps memoised nodes alive so their ids stay unique

    def build(self, value: Any) -> Any:
        """The object `value` describes."""
        if isinstance(value, VarNode):
            return self.var(value)
        if isinstance(value, CallableNode):
            if isinstance(value, SingletonNode | PartialNode):
                key = id(value)
                if key not in self._singletons:
                    # A partial is made once per build too: every reference gets the same callable.
                    is_partial = isinstance(value, PartialNode)
                    result = BuiltPartial(self, value) if is_partial else self.call(value)
                    self._singletons[key] = result
                    self._keep.append(value)
                return self._singletons[key]
            return self.call(value)
        if isinstance(value, dict):
            return {key: self.build(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.build(item) for item in value]
        if isinstance(value, tuple):
            return tuple(self.build(item) for item in value)
        return value

    def var(self, node: VarNode) -> Any:
        if node.name in self.context_vars:
            return self.context_vars[node.name]
        if node.name in self.lazy_vars:
            self.context_vars[node.name] = self.lazy_vars.pop(node.name)()
            return self.context_vars[node.name]
        if node.has_default:
            return self.build(node.default)
        known = ", ".join(sorted({*self.context_vars, *self.lazy_vars})) or "none"
        raise errors.UnboundVarError(
            f"!var {node.name} has no value and no default (values given: {known})", node.origin
        )

    def resolve(self, node: CallableNode) -> Any:
        searchpath = None
        if node.submodule_searchpath is not None:
            searchpath = self.build(node.submodule_searchpath)
            if isinstance(searchpath, str | os.PathLike):
                searchpath = [searchpath]
            if searchpath is not None and not (
                isinstance(searchpath, list | tuple)
                and all(isinstance(path, str | os.PathLike) for path in searchpath)
            ):
                raise errors.ImportSpecError(
                    f"{describe(node)}: submodule_searchpath must be a path or a list of paths "
                    f"(got {searchpath!r})",
                    node.origin,
                )
            if searchpath is not None:
                searchpath = [os.fspath(path) for path in searchpath]
        return resolve(node.spec, searchpath, node.origin)

    def call(
        self,
        node: CallableNode,
        extra_args: tuple[Any, ...] = (),
        extra_kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        """Build the node's arguments, then call what its spec names."""
        if isinstance(node, MetaNode):
            args, kwargs = list(node.args), dict(node.kwargs)
        elif isinstance(node, DListNode):
            return [self.build(item) for item in node.values_list()]
        else:
            # Arguments first: their side effects happen before the callable is even imported.
            args = [self.build(arg) for arg in node.args]
            kwargs = {key: self.build(value) for key, value in node.kwargs.items()}
        if node.latent_args is not None:
            latent = self.build(node.latent_args)
            if latent is not None:
                if not isinstance(latent, Mapping):
                    raise errors.BuildError(
                        f"{describe(node)}: latent_args must build a mapping", node.origin
                    )
                kwargs.update(latent)
        args.extend(extra_args)
        kwargs.update(extra_kwargs or {})
        function = self.resolve(node)
        if not callable(function):
            raise errors.ImportSpecError(
                f"{node.spec!r} names a {type(function).__name__}, not a callable", node.origin
            )
        if self.check_args:
            check_arguments(function, args, kwargs, node)
        try:
            return function(*args, **kwargs)
        except errors.ConfigError:
            raise
        except Exception as error:
            raise errors.BuildError(
                f"{describe(node)} raised {type(error).__name__}: {error}", node.origin
            ) from error


def materialize(value: Any, context_vars: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
    """Build `value` (a graph or part of one) in a fresh build."""
    return Builder({**(context_vars or {}), **kwargs}).build(value)


__all__ = ["Builder", "BuiltPartial", "FactoryNode", "materialize"]
