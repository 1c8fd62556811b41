"""A config's declared command-line flags (`dynamic_args` target) and how their values reach the config.

A config declares flags as a list of mappings, usually a `!dlist` so children can add and remove them:

    dynamic_args: !dlist:@dynamic_args
        max_steps:
            names: "--max-steps"          # or a list: ["--save-strategy", "-S"]
            type: "int"                   # int | float | str | bool | path
            help: "Stop after this many optimizer steps"

A flag's value becomes a Jinja variable (named like the long flag: `max_steps`) when the config is rendered
again; flags not given are left out so the template's own defaults apply. Each value the flag changed is
recorded in the graph's provenance as set by the flag.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from forgather.config import errors
from forgather.config.graph import Config, walk
from forgather.config.nodes import CallableNode, ConfigMapping, DListNode, Node
from forgather.config.origin import Origin, Provenance

TYPES = {"int": int, "float": float, "str": str, "path": str}
ACTIONS = (
    "store",
    "store_true",
    "store_false",
    "store_const",
    "append",
    "append_const",
    "count",
    "extend",
)


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


@dataclass
class DynamicArg:
    """One declared flag."""

    names: list[str]
    dest: str
    type: str = "str"
    help: str = ""
    choices: list[Any] | None = None
    action: str | None = None
    default: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    origin: Origin | None = None  # where the config declares its dynamic_args

    @property
    def flag(self) -> str:
        return max(self.names, key=len)


def declared_args(config: Config) -> list[DynamicArg]:
    """The flags the config declares in its `dynamic_args` target (none if it has no such target)."""
    if "dynamic_args" not in config.targets:
        return []
    raw = config.build("dynamic_args")
    if raw is None:
        return []
    result: list[DynamicArg] = []
    origin = (
        config.graph.provenance.get("dynamic_args")
        if isinstance(config.graph, ConfigMapping)
        else None
    )
    where = origin.origin if origin else None
    if isinstance(raw, dict):
        raw = list(raw.values())
    if not isinstance(raw, list | tuple):
        raise errors.GraphError(
            f"dynamic_args must build a list of flags (got {raw!r})", where, "dynamic_args"
        )
    for entry in raw:
        if entry is None:
            continue
        if not isinstance(entry, dict) or "names" not in entry:
            raise errors.GraphError(
                f"each dynamic_args entry needs 'names' (got {entry!r})", where, "dynamic_args"
            )
        names = entry["names"]
        if not isinstance(names, str | list | tuple):
            raise errors.GraphError(
                f"dynamic_args names must be a flag or a list of flags (got {names!r})",
                where,
                "dynamic_args",
            )
        names = [names] if isinstance(names, str) else [str(n) for n in names]
        if not names or not all(n.startswith("-") for n in names):
            raise errors.GraphError(
                f"dynamic_args names must be flags like --max-steps (got {names})", where
            )
        long = max(names, key=len)
        dest = str(entry.get("dest") or long.lstrip("-").replace("-", "_"))
        kind = str(entry.get("type", "str"))
        action = entry.get("action")
        if action is not None and action not in ACTIONS:
            raise errors.GraphError(
                f"dynamic arg {long}: unknown action {action!r} (use one of {', '.join(ACTIONS)})",
                where,
                "dynamic_args",
            )
        if kind not in (*TYPES, "bool"):
            raise errors.GraphError(
                f"dynamic arg {long}: unknown type {kind!r}", where, "dynamic_args"
            )
        result.append(
            DynamicArg(
                names,
                dest,
                kind,
                str(entry.get("help", "")),
                entry.get("choices"),
                action,
                entry.get("default"),
                origin=where,
            )
        )
    return result


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D102 - argparse hook
        raise errors.ConfigError(message, key="dynamic args")

    def exit(self, status: int = 0, message: str | None = None):  # noqa: D102 - never exit the process
        raise errors.ConfigError(
            message or f"argument parsing stopped (status {status})", key="dynamic args"
        )


def parse_flags(
    declared: list[DynamicArg], tokens: list[str], prog: str = "forgather"
) -> tuple[dict[str, Any], dict[str, str]]:
    """Parse `tokens` against the declared flags: (Jinja variables, flag text for each variable)."""
    parser = _Parser(prog=prog, add_help=False, allow_abbrev=False)
    for arg in declared:
        options: dict[str, Any] = {"dest": arg.dest, "default": argparse.SUPPRESS, "help": arg.help}
        if arg.action:
            options["action"] = arg.action
        elif arg.type == "bool":
            options["type"] = _parse_bool
            options["nargs"] = "?"
            options["const"] = True
        else:
            options["type"] = TYPES[arg.type]
        if arg.choices:
            options["choices"] = arg.choices
        try:
            parser.add_argument(*arg.names, **options)
        except (argparse.ArgumentError, ValueError, TypeError) as error:  # a bad declaration
            raise errors.GraphError(
                f"dynamic arg {arg.flag}: {error}", arg.origin, "dynamic_args"
            ) from None
    namespace, unknown = parser.parse_known_args(tokens)
    if unknown:
        known = ", ".join(a.flag for a in declared) or "none"
        raise errors.ConfigError(
            f"unknown option(s) {' '.join(unknown)}; this config declares: {known}",
            key="dynamic args",
        )
    values = vars(namespace)
    texts: dict[str, str] = {}
    for arg in declared:
        if arg.dest in values:
            texts[arg.dest] = f"{arg.flag} {values[arg.dest]}"
    return values, texts


def _keyed_mapping(container: Any, key: Any) -> ConfigMapping | None:
    """The mapping that records provenance for `key` of `container` (a node's kwargs or dlist items)."""
    if isinstance(container, DListNode):
        container = container.items
    elif isinstance(container, CallableNode) and not isinstance(key, int):
        container = container.kwargs
    return container if isinstance(container, ConfigMapping) else None


def record_flag_provenance(base: Config, flagged: Config, texts: dict[str, str]) -> None:
    """Mark every value that the flags changed (compared with `base`) as set by those flags."""
    if not texts:
        return
    label = ", ".join(texts.values())
    origin = Origin("<command line>", 0, None, kind="dynamic-arg", text=label)
    base_values: dict[str, tuple[Any, Provenance | None]] = {}
    for path, value, container, key in walk(base.graph):
        if not isinstance(value, Node | dict | list | tuple):
            mapping = _keyed_mapping(container, key)
            base_values[path] = (
                value,
                mapping.provenance.get(key) if mapping is not None else None,
            )
    for path, value, container, key in walk(flagged.graph):
        container = _keyed_mapping(container, key)
        if isinstance(value, Node | dict | list | tuple) or container is None:
            continue
        before = base_values.get(path)
        if before is not None and before[0] == value and type(before[0]) is type(value):
            continue
        previous = container.provenance.get(key)
        if before is not None:
            # What the config said without the flag: its own override chain, then its final value.
            base_record = before[1]
            overrode = list(base_record.overrode) if base_record else []
            overrode.append((base_record.origin if base_record else None, before[0]))
        else:
            overrode = list(previous.overrode) if previous else []
        written_at = previous.origin if previous else None
        container.provenance[key] = Provenance(
            Origin(
                origin.file,
                0,
                written_at.template if written_at else None,
                "dynamic-arg",
                f"{label} via {written_at}" if written_at else label,
            ),
            overrode,
        )
