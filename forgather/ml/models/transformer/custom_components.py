"""Components a model uses beyond the built-in ones, by key.

A config field that takes a component (``attention``, ``feedforward``, ``norm``, ``layer_type``,
``positional_encoding``, ``input_encoder``; ``init_scheme`` takes a function) holds a built-in name
or the key ``"<file stem>:<name>"`` of a class (or function) in ``CUSTOM_COMPONENTS``.
In forgather's package the registry starts empty and fills as models are configured with classes
(``build_model(attention=MyAttention)``, a config's ``!partial:/path/my_attention.py:MyAttention``).
A saved model directory gets its own version of this file, which imports the copied source of each
component it uses, so the directory loads with ``trust_remote_code`` where forgather is not
installed.

Part of the self-contained remote-code package: standard library only.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

CUSTOM_COMPONENTS: dict[str, type] = {}

COMPONENT_FIELDS = (
    "attention",
    "feedforward",
    "norm",
    "layer_type",
    "positional_encoding",
    "input_encoder",
    "init_scheme",
)
"""The config fields that take a component."""

FUNCTION_FIELDS = ("init_scheme",)
"""The component fields that take a function rather than a class."""

# The package's own module names: a component file may not take one (the saved directory holds both).
RESERVED_STEMS = (
    "__init__",
    "artefact",
    "attention",
    "configuration_forgather",
    "custom_components",
    "feedforward",
    "layers",
    "loss",
    "modeling_forgather",
    "norms",
    "positional",
)


def component_key(cls: type) -> str:
    """``"<stem of the file that defines cls>:<qualified name>"``."""
    module = sys.modules.get(cls.__module__)
    file = getattr(module, "__file__", None)
    stem = Path(file).stem if file else cls.__module__.rpartition(".")[2]
    return f"{stem}:{cls.__qualname__}"


def register(field: str, value: Any) -> str:
    """Register a component class (a function for ``init_scheme``), or a ``!partial`` of one without
    arguments, and return its key.

    The latest registration of a key wins: a model is built right after its config names its
    classes, and a saved model records the classes its modules actually are (see artefact)."""
    wants = _is_function if field in FUNCTION_FIELDS else _is_class
    what = "function" if field in FUNCTION_FIELDS else "class"
    cls = value
    if not wants(value) and wants(getattr(value, "func", None)):
        # functools.partial, or the callable a config's `!partial` builds (the same attributes)
        if getattr(value, "args", ()) or getattr(value, "keywords", {}):
            raise ValueError(
                f"{field}: a component is given as a {what}; its options go in the model config "
                f"(it reads them from the config it is given), got arguments "
                f"{value.args or ''}{value.keywords or ''}"
            )
        cls = value.func
    if not wants(cls):
        raise ValueError(
            f"{field} must be a built-in name or a {what} (e.g. "
            f"!partial:/path/to/my_module.py:My{what.title()}), got {value!r}"
        )
    key = component_key(cls)
    stem = key.partition(":")[0]
    if stem in RESERVED_STEMS and not cls.__module__.endswith(f"transformer.{stem}"):
        raise ValueError(
            f"{field}: {cls.__qualname__} is defined in {stem}.py, a name forgather's own model "
            "files use; rename the file"
        )
    CUSTOM_COMPONENTS[key] = cls
    return key


def _is_class(value: Any) -> bool:
    return isinstance(value, type)


def _is_function(value: Any) -> bool:
    return isinstance(value, (types.FunctionType, types.BuiltinFunctionType))


def lookup(field: str, key: str, builtins: tuple[str, ...] | list[str]) -> Any:
    """The class (or function) registered under ``key``, else one clear error naming the field."""
    try:
        return CUSTOM_COMPONENTS[key]
    except KeyError:
        raise ValueError(
            f"{field}={key!r} is neither a built-in ({', '.join(builtins)}) nor a component known "
            "to this process: give it itself (!partial:/path/to/file.py:Name), or load "
            "the saved model directory that carries its source"
        ) from None


def is_custom(value: Any) -> bool:
    """Whether a config value is a custom component's key (built-in names have no colon)."""
    return isinstance(value, str) and ":" in value


def source_text(cls: Any) -> str | None:
    """The text of the file that defines `cls` (None when it has none)."""
    file = getattr(sys.modules.get(cls.__module__), "__file__", None)
    try:
        return Path(file).read_text(encoding="utf-8") if file else None
    except OSError:
        return None
