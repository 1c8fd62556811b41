"""The `forgather` command: global options, error handling and the command groups."""

from __future__ import annotations

import sys
import traceback as tb
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from forgather.cli import (
    checkpoint,
    common,
    control,
    convert,
    dataset,
    explain,
    finalize,
    generate,
    inspect,
    scaffold,
    serve,
    tls,
    train,
    update_model,
    vocab,
)
from forgather.cli import tb as tb_command  # `tb` is the traceback module here
from forgather.cli.common import State


def report_error(error: BaseException, show_traceback: bool) -> None:
    """One red `error:` line on stderr; the traceback above it only when asked for."""
    if show_traceback:
        typer.echo("".join(tb.format_exception(error)), err=True, nl=False)
    typer.secho(f"error: {common.one_line(str(error))}", fg="red", err=True)


class ForgatherGroup(TyperGroup):
    """Turns user errors (`ForgatherError`) and filesystem errors (`OSError`: a path under a regular
    file, no permission, a full disk) raised by any command into one line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        from forgather.errors import ForgatherError, describe_os_error

        try:
            return super().invoke(ctx)
        except ForgatherError as error:
            obj = ctx.find_object(State)
            report_error(error, bool(obj and obj.traceback))
            raise typer.Exit(1) from None
        except OSError as error:
            obj = ctx.find_object(State)
            report_error(OSError(describe_os_error(error)), bool(obj and obj.traceback))
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=ForgatherGroup,
    name="forgather",
    help="Inspect, explain and build forgather project configs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,  # plain Click help: long flag names are never cut at 80 columns
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from forgather import __version__

        typer.echo(f"forgather {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    project_dir: Annotated[
        str,
        typer.Option(
            "-p",
            "--project-dir",
            help="Project directory (or any directory below it): searched upward for meta.yaml.",
        ),
    ] = ".",
    config_template: Annotated[
        str,
        typer.Option(
            "-t",
            "--config-template",
            help="Config to use, relative to the project's config prefix; default: the project's default config.",
        ),
    ] = "",
    traceback: Annotated[
        bool, typer.Option("--traceback", help="Show the Python traceback of errors.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Inspect, explain and build forgather project configs.

    Commands that load a config accept trailing overrides (`a.b=1`, `+a.c=2`, `~a.d`) and the
    config's declared flags (e.g. `--max-steps 100`).
    """
    ctx.obj = State(project_dir, config_template, traceback)


inspect.register(app)
explain.register(app)
scaffold.register(app)
dataset.register(app)
checkpoint.register(app)
control.register(app)
tb_command.register(app)
train.register(app)
generate.register(app)
convert.register(app)
finalize.register(app)
vocab.register(app)
update_model.register(app)
serve.register(app)
tls.register(app)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "train" in args and "--" in args[args.index("train") :]:
        cut = args.index("--", args.index("train"))
        train.TORCHRUN_ARGS[:] = args[cut + 1 :]
        args = args[:cut]
    if "--help" in args or "-h" in args:
        _describe_config_flags(args)
    app(args=args)


def _global_option(args: list[str], short: str, long: str, default: str) -> str:
    for index, arg in enumerate(args):
        if arg in (short, long) and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(long + "="):
            return arg.split("=", 1)[1]
    return default


def _describe_config_flags(args: list[str]) -> None:
    """On `forgather COMMAND --help`, list the flags the selected config declares (if it loads)."""
    from forgather.cli.common import OVERRIDES_HELP

    names = {info.name: info for info in app.registered_commands if info.name}
    command = next((arg for arg in args if arg in names), None)
    info = names.get(command or "")
    if info is None or not (info.epilog or "").startswith(OVERRIDES_HELP):
        return
    info.epilog = OVERRIDES_HELP  # drop flags listed for an earlier config (same process)
    try:
        from forgather.config.dynamic_args import declared_args
        from forgather.project import Project

        project = Project(
            _global_option(args, "-t", "--config-template", ""),
            _global_option(args, "-p", "--project-dir", "."),
        )
        declared = declared_args(project.config)
    except Exception:  # no project here, or a broken config: the plain help still helps
        return
    if declared:
        lines = [f"{', '.join(arg.names)} ({arg.type}): {arg.help}" for arg in declared]
        info.epilog = (
            f"{OVERRIDES_HELP}\n\nFlags declared by {project.config_name}:\n\n" + "\n\n".join(lines)
        )


if __name__ == "__main__":
    main()
