"""Globals and filters available to every config template (all cheap; nothing imports torch)."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import socket
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import yaml
from jinja2 import Undefined

from forgather.config.errors import UndefinedVariableError

_MISSING = object()


def _defined(function: str, *values: Any) -> None:
    for value in values:
        if isinstance(value, Undefined):
            # Touching an undefined value raises the StrictUndefined error naming the variable.
            try:
                str(value)
            except Exception as error:  # jinja2.UndefinedError
                raise UndefinedVariableError(f"{function}(): {error}") from None


def joinpath(*parts: Any) -> str:
    """os.path.join that refuses undefined parts."""
    _defined("joinpath", *parts)
    return os.path.join(*[str(p) for p in parts])


def normpath(path: Any) -> str:
    """os.path.normpath that refuses an undefined path."""
    _defined("normpath", path)
    return os.path.normpath(str(path))


def toyaml(value: Any, default: Any = _MISSING) -> str:
    """Render a value as inline YAML; an undefined value takes `default`, or is an error without one."""
    if isinstance(value, Undefined):
        if default is _MISSING:
            _defined("toyaml", value)
        value = default
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = _inline_yaml(value)
    if any(char in text for char in "\n\r\x85\u2028\u2029"):
        # Strings with line breaks: double-quoted escapes keep the value on one line and intact.
        text = _inline_yaml(value, default_style='"')
    return text


def _inline_yaml(value: Any, **options: Any) -> str:
    text = yaml.safe_dump(
        value, default_flow_style=True, width=1 << 30, allow_unicode=True, **options
    )
    text = text.strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    elif text.endswith("..."):
        text = text[:-3].rstrip()
    return text


class Versions(Mapping[str, str]):
    """Installed package versions, looked up on first use from package metadata."""

    names = ("python", "forgather", "torch", "transformers", "accelerate", "datasets", "tokenizers")

    def __init__(self) -> None:
        self._cache: dict[str, str] = {}

    def __getitem__(self, name: str) -> str:
        if name not in self._cache:
            if name == "python":
                self._cache[name] = platform.python_version()
            else:
                try:
                    self._cache[name] = importlib.metadata.version(name)
                except importlib.metadata.PackageNotFoundError:
                    self._cache[name] = "not installed"
        return self._cache[name]

    def __getattr__(self, name: str) -> str:
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return repr(dict(self))


def _time(fmt: str | None, utc: bool) -> Callable[[], str]:
    def stamp() -> str:
        now = datetime.datetime.now(datetime.UTC if utc else None)
        return now.isoformat() if fmt is None else now.strftime(fmt)

    return stamp


def _platform_dir(kind: str) -> Callable[[], str]:
    def directory() -> str:
        import platformdirs

        return getattr(platformdirs, kind)("forgather")

    return directory


def default_globals() -> dict[str, Any]:
    """The globals every config template sees."""
    return {
        "joinpath": joinpath,
        "normpath": normpath,
        "abspath": os.path.abspath,
        "relpath": os.path.relpath,
        "dirname": os.path.dirname,
        "basename": os.path.basename,
        "splitext": os.path.splitext,
        "repr": repr,
        "modname_from_path": lambda path: os.path.splitext(os.path.basename(path))[0],
        "isotime": _time(None, utc=False),
        "utcisotime": _time(None, utc=True),
        "filetime": _time("%Y-%m-%dT%H-%M-%S", utc=False),
        "utcfiletime": _time("%Y-%m-%dT%H-%M-%S", utc=True),
        "now": lambda: datetime.datetime.now(),
        "utcnow": lambda: datetime.datetime.now(datetime.UTC),
        "user_home_dir": lambda: os.path.expanduser("~"),
        "getcwd": os.getcwd,
        "forgather_config_dir": _platform_dir("user_config_dir"),
        "user_config_dir": _platform_dir("user_config_dir"),
        "user_data_dir": _platform_dir("user_data_dir"),
        "user_cache_dir": _platform_dir("user_cache_dir"),
        "site_data_dir": _platform_dir("site_data_dir"),
        "site_config_dir": _platform_dir("site_config_dir"),
        "hostname": socket.gethostname(),
        "uname": platform.uname()._asdict(),
        "versions": Versions(),
        "templatelib_dir": os.path.join(os.path.dirname(os.path.dirname(__file__)), "templatelib"),
    }


def default_filters() -> dict[str, Callable[..., Any]]:
    """The extra filters every config template sees."""
    return {"toyaml": toyaml}
