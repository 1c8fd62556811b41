"""Commands that explain and check configs: explain, diff, validate."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from forgather.cli import common
from forgather.cli.common import EXTRA_ARGS, OVERRIDES_HELP

if TYPE_CHECKING:
    from rich.table import Table

    from forgather.config.explain import DiffEntry


def explain(
    ctx: typer.Context,
    key: Annotated[
        str, typer.Argument(help="Dotted key path, e.g. trainer_args.max_steps", show_default=False)
    ],
) -> None:
    """Explain one value: where it was set (file:line), what it overrode, and the templates used.

    Write KEY before the overrides and flags.
    """
    from forgather.config.explain import explain as explain_value
    from forgather.config.explain import render_explanation, template_chain

    (key,), tokens = common.positionals(ctx, [key])
    project = common.load(ctx, tokens=tokens)
    expl = explain_value(project.config, key, templates=template_chain(project.environment))
    common.echo_text(render_explanation(expl))


def diff(
    ctx: typer.Context,
    config_a: Annotated[str, typer.Argument(help="First config (e.g. a.yaml)", show_default=False)],
    config_b: Annotated[str, typer.Argument(help="Second config", show_default=False)],
) -> None:
    """Compare two configs of the project value by value (both get the same overrides and flags).

    Exits 0 whether or not they differ.
    """
    from forgather.config.explain import diff_configs

    (config_a, config_b), tokens = common.positionals(ctx, [config_a, config_b])
    project_a = common.load(ctx, config_a, tokens)
    project_b = common.load(ctx, config_b, tokens)
    entries = diff_configs(project_a.config, project_b.config)
    if not entries:
        typer.echo("no differences")
        return
    common.console().print(render_diff(entries, config_a, config_b))


def validate(ctx: typer.Context) -> None:
    """Check the config graph without building anything: import specs, arguments, names, !var values.

    Prints one line per problem (and exits 1), or OK with the number of nodes checked.
    """
    from forgather.config.nodes import CallableNode, iter_nodes
    from forgather.config.validate import validate_graph

    project = common.load(ctx)
    graph = project.config.targets  # what can be built; `.name` anchor holders only matter if used
    problems = validate_graph(graph, known_vars=set())
    if problems:
        # All but the last are listed here; the last is raised so that it is reported (with its
        # traceback under --traceback) like any other error, and the exit status is 1.
        for problem in problems[:-1]:
            typer.secho(f"error: {common.one_line(str(problem))}", fg="red", err=True)
        raise problems[-1]
    count = sum(1 for node in iter_nodes(graph) if isinstance(node, CallableNode))
    typer.echo(f"OK: {count} nodes checked")


STATUS_STYLE = {"changed": "yellow", "added": "green", "removed": "red"}


def render_diff(entries: list[DiffEntry], name_a: str, name_b: str) -> Table:
    """A table of the differences: key, A value, where A set it, B value, where B set it."""
    from rich.table import Table
    from rich.text import Text

    from forgather.config.explain import format_origin, format_value

    table = Table(title=f"{name_a} vs {name_b}", show_lines=False)
    table.add_column("key", overflow="fold")
    table.add_column(f"{name_a} value", overflow="fold")
    table.add_column(f"{name_a} set at", overflow="fold")
    table.add_column(f"{name_b} value", overflow="fold")
    table.add_column(f"{name_b} set at", overflow="fold")
    for entry in entries:
        style = STATUS_STYLE.get(entry.status, "")
        a_missing = entry.status == "added"
        b_missing = entry.status == "removed"
        table.add_row(
            Text(entry.path, style=style),
            Text("—" if a_missing else format_value(entry.a_value, 60)),
            Text("" if a_missing else format_origin(entry.a_origin), style="dim"),
            Text("—" if b_missing else format_value(entry.b_value, 60)),
            Text("" if b_missing else format_origin(entry.b_origin), style="dim"),
        )
    return table


def register(app: typer.Typer) -> None:
    for command in (explain, diff, validate):
        app.command(command.__name__, context_settings=EXTRA_ARGS, epilog=OVERRIDES_HELP)(command)
