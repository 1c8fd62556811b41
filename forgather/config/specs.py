"""Import specs: how a tag names the callable it calls.

* `name` (no colon): a Python builtin (`len`, `dict`, `str.upper`) or one of the config built-ins
  `getitem`, `getattr`, `call`, `keys`, `values`, `items`, `named_dict`, `named_list`, `named_tuple`;
* `package.module:Symbol.attr`: import the module, then follow the attributes;
* `/abs/path/file.py:Symbol`: load the file as a module whose name is derived from its full path, so two
  files with the same name never collide; `submodule_searchpath` lets it import siblings relatively;
* `.module:Symbol`: a relative import, meaningful only inside generated code.
"""

from __future__ import annotations

import builtins
import hashlib
import importlib
import importlib.util
import operator
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from forgather.config.errors import ImportSpecError
from forgather.config.origin import Origin


def call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call `function` with the remaining arguments."""
    return function(*args, **kwargs)


def keys(mapping: Any) -> list[Any]:
    return list(mapping.keys())


def values(mapping: Any) -> list[Any]:
    return list(mapping.values())


def items(mapping: Any) -> list[tuple[Any, Any]]:
    return list(mapping.items())


def named_dict(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return dict(*args, **kwargs)


def named_list(*args: Any) -> list[Any]:
    return list(args)


def named_tuple(*args: Any) -> tuple[Any, ...]:
    return tuple(args)


CONFIG_BUILTINS: dict[str, Callable[..., Any]] = {
    "getitem": operator.getitem,
    "getattr": getattr,
    "call": call,
    "keys": keys,
    "values": values,
    "items": items,
    "named_dict": named_dict,
    "named_list": named_list,
    "named_tuple": named_tuple,
}

SPEC_RE = re.compile(r"^(?P<module>[^:]+):(?P<symbol>[A-Za-z_][\w.]*)$")
_cache: dict[tuple[str, tuple[str, ...]], Any] = {}


def is_file_spec(module: str) -> bool:
    return module.endswith(".py")


def file_module_name(path: str) -> str:
    """A module name unique to the file's absolute path."""
    path = os.path.abspath(path)
    digest = hashlib.sha1(path.encode()).hexdigest()[:12]
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    return f"forgather_dynamic.{stem}_{digest}"


def load_file_module(path: str, searchpath: Sequence[str] = ()) -> Any:
    """Load a Python file as a module (once per path); `searchpath` serves its relative imports.

    Generated code (codegen) carries this function's and file_module_name's source as its file
    loader: keep them to the standard modules imported at the top of this file."""
    path = os.path.abspath(path)
    name = file_module_name(path)
    module = sys.modules.get(name)
    if module is not None:
        return module
    if "forgather_dynamic" not in sys.modules:
        package = importlib.util.module_from_spec(
            importlib.machinery.ModuleSpec("forgather_dynamic", None, is_package=True)
        )
        package.__path__ = []
        sys.modules["forgather_dynamic"] = package
    locations = [os.path.abspath(p) for p in searchpath] or [os.path.dirname(path)]
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=locations)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _follow(obj: Any, dotted: str, spec: str, origin: Origin | None) -> Any:
    for part in dotted.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportSpecError(f"{spec!r}: {part!r} not found", origin) from None
    return obj


def resolve(
    spec: str, searchpath: Sequence[str] | None = None, origin: Origin | None = None
) -> Any:
    """The object an import spec names; a clear `ImportSpecError` if it cannot be found."""
    key = (spec, tuple(searchpath or ()))
    if key in _cache:
        return _cache[key]
    if ":" not in spec:
        head, _, rest = spec.partition(".")
        if head in CONFIG_BUILTINS and not rest:
            found = CONFIG_BUILTINS[head]
        elif hasattr(builtins, head):
            found = _follow(builtins, spec, spec, origin)
        else:
            raise ImportSpecError(
                f"{spec!r} is not a builtin; write 'module:Name' (e.g. 'torch.nn:Linear')", origin
            )
    else:
        match = SPEC_RE.match(spec)
        if not match:
            raise ImportSpecError(
                f"{spec!r} is not of the form 'module:Name' or '/path/file.py:Name'", origin
            )
        module_name, symbol = match.group("module"), match.group("symbol")
        if module_name.startswith(".") and not is_file_spec(module_name):
            raise ImportSpecError(
                f"{spec!r} is a relative import; it only works inside generated code", origin
            )
        try:
            if is_file_spec(module_name):
                if not os.path.isfile(module_name):
                    raise ImportSpecError(f"{spec!r}: no such file {module_name}", origin)
                module = load_file_module(module_name, searchpath or ())
            else:
                module = importlib.import_module(module_name)
        except ImportSpecError:
            raise
        except ModuleNotFoundError as error:
            raise ImportSpecError(f"{spec!r}: {error}", origin) from None
        except Exception as error:
            raise ImportSpecError(
                f"{spec!r}: importing failed: {type(error).__name__}: {error}", origin
            ) from error
        found = _follow(module, symbol, spec, origin)
    _cache[key] = found
    return found
