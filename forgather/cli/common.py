"""Shared pieces of the `forgather` commands: global state, output helpers, config loading.

Kept free of heavy imports: the config engine is imported when a command needs it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from forgather.project import MetaConfig, Project

# The arguments of the commands that write a new model directory from another (convert, finalize,
# update-vocab): one definition, so they read and behave alike.
ModelSource = Annotated[
    Path, typer.Argument(help="A model directory, a checkpoint, or (with --checkpoint) a run.")
]
NewModelDir = Annotated[Path, typer.Argument(help="A new (or empty) directory for the result.")]
CheckpointChoice = Annotated[
    str | None,
    typer.Option(
        help="SRC is a run's output directory: take its latest, best or named checkpoint "
        "(e.g. checkpoint-800)."
    ),
]
WeightsDtype = Annotated[
    str, typer.Option(help="Weights' dtype: auto (the source's), float32, bfloat16, float16.")
]


def progress(line: str) -> None:
    """A `forgather:` progress line on stderr (stdout keeps the command's result)."""
    typer.echo(f"forgather: {line}", err=True)


# Commands that load a config take trailing overrides and the config's declared flags, which Typer
# does not know: they arrive in `ctx.args`.
EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}

OVERRIDES_HELP = (
    "Trailing tokens adjust the config before it is used: "
    "`a.b=VALUE` replaces a value (VALUE is YAML, e.g. `trainer_args.max_steps=100`), "
    "`+a.b=VALUE` adds a key, `~a.b` deletes one, and the flags the config declares in its "
    "`dynamic_args` (e.g. `--max-steps 100`) re-render it. "
    "Unknown flags and paths that match nothing are errors."
)


@dataclass
class State:
    """Global options, kept in `ctx.obj`."""

    project_dir: str = "."
    config_template: str = ""
    traceback: bool = False


def state(ctx: typer.Context) -> State:
    obj = ctx.find_object(State)
    return obj if obj is not None else State()


def one_line(text: str) -> str:
    """`text` with its lines joined, so an error is reported as one line."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def stdout_is_tty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def console() -> Console:
    """A console on the current stdout: colour on a terminal, plain (and unwrapped) otherwise."""
    from rich.console import Console

    if stdout_is_tty():
        return Console(highlight=False)
    return Console(highlight=False, width=1000, no_color=True, color_system=None)


def echo_text(text: str) -> None:
    """Print `text` exactly as it is (no markup), ending with one newline."""
    typer.echo(text, nl=not text.endswith("\n"))


def print_pretty(value: Any) -> None:
    """Pretty-print a Python value (coloured on a terminal)."""
    if stdout_is_tty():
        from rich.pretty import Pretty

        console().print(Pretty(value))
    else:
        from rich.pretty import pretty_repr

        echo_text(pretty_repr(value, max_width=100))


def project_error(message: str) -> Exception:
    from forgather.config.errors import ProjectError

    return ProjectError(message)


def find_project(path: str | Path) -> Path:
    """The project directory at or above `path`; a user error if there is none."""
    from forgather.workspace import find_project_dir

    found = find_project_dir(path)
    if found is None:
        raise project_error(
            f"no meta.yaml at or above {Path(path).resolve()} (use -p to choose a project)"
        )
    return found


def load_meta(ctx: typer.Context) -> MetaConfig:
    from forgather.project import MetaConfig

    return MetaConfig.load(find_project(state(ctx).project_dir))


def load(
    ctx: typer.Context, config_template: str | None = None, tokens: list[str] | None = None
) -> Project:
    """Load the selected config (or `config_template`) with the command line's overrides and flags."""
    from forgather.project import load_project

    st = state(ctx)
    template = st.config_template if config_template is None else config_template
    return load_project(
        find_project(st.project_dir), template, list(ctx.args if tokens is None else tokens)
    )


def split_positionals(tokens: list[str], count: int) -> tuple[list[str], list[str]]:
    """Pick `count` positional arguments out of `tokens` (which also hold overrides and flags).

    Click fills positionals with the first tokens, flags included; here a positional is a token that
    is neither an override, nor a flag, nor the value right after a `--flag` without `=`. Positionals
    written first are therefore always found; others are found when the flags before them take values.
    """
    from forgather.config.overrides import is_override

    picked: list[int] = []
    for index, token in enumerate(tokens):
        if token.startswith("-") or is_override(token):
            continue
        previous = tokens[index - 1] if index else ""
        if previous.startswith("-") and "=" not in previous and index - 1 not in picked:
            continue
        picked.append(index)
        if len(picked) == count:
            break
    if len(picked) < count:  # e.g. `--flag value KEY` where the flag took no value
        plain = [
            i
            for i, t in enumerate(tokens)
            if not t.startswith("-") and not is_override(t) and i not in picked
        ]
        picked = sorted(picked + plain[len(plain) - (count - len(picked)) :])
    positionals = [tokens[i] for i in picked]
    rest = [t for i, t in enumerate(tokens) if i not in picked]
    return positionals, rest


def positionals(ctx: typer.Context, given: list[str]) -> tuple[list[str], list[str]]:
    """The command's positional values and the remaining override/flag tokens.

    `given` are the positionals as Click filled them; if all are plain, they are right.
    """
    from forgather.config.overrides import is_override

    if all(not g.startswith("-") and not is_override(g) for g in given):
        return given, list(ctx.args)
    values, rest = split_positionals([*given, *ctx.args], len(given))
    if len(values) < len(given):
        raise project_error(f"expected {len(given)} argument(s) besides overrides and flags")
    return values, rest
