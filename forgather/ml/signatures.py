"""Whether a callable takes a keyword argument: the one check behind every "pass it only if it is
wanted" call (the trainer's factories, `preprocess_dataset`'s map function, LR scheduler chains),
and what a factory's first parameter is called (named parameters or plain ones)."""

from __future__ import annotations

import inspect
from collections.abc import Callable


def accepts_keyword(function: Callable, name: str, *, var_keyword: bool = False) -> bool:
    """Whether `function(name=...)` is accepted.

    A parameter called `name` (not positional-only) always counts. `**kwargs` counts only when
    `var_keyword` is true: a caller that may pass extra context (a map function's `feature=`) says
    so, one that would break a wrapped callable (a torch scheduler behind `**kwargs`) does not. A
    config `!partial` reports its target's signature; an object with a `func` (a `functools.partial`
    of a callable without one) is looked through. False when no signature can be read.
    """
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    if name in parameters:
        return parameters[name].kind is not inspect.Parameter.POSITIONAL_ONLY
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        if var_keyword:
            return True
        inner = getattr(function, "func", None)
        if inner is not None and inner is not function:
            return accepts_keyword(inner, name)
    return False


def first_parameter_name(factory: Callable) -> str | None:
    """The name of the first parameter `factory` still takes (looking through `!partial` wrappers)."""
    try:
        parameters = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return None
    if (
        parameters
        and parameters[0].kind is inspect.Parameter.VAR_POSITIONAL
        and hasattr(factory, "func")
    ):
        return first_parameter_name(factory.func)  # a config `!partial`: look at its target
    return parameters[0].name if parameters else None


__all__ = ["accepts_keyword", "first_parameter_name"]
