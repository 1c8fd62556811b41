"""`forgather tb`: run TensorBoard on the project's training logs."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from forgather.cli import common


def tensorboard_command(logdir: Path | str, extra: list[str]) -> list[str]:
    executable = shutil.which("tensorboard")
    base = [executable] if executable else [sys.executable, "-m", "tensorboard.main"]
    return [*base, "--logdir", str(logdir), *extra]


def choose_logdir(meta: dict, all_runs: bool) -> Path | None:
    """The selected run's logging_dir (else output_dir); with --all, the directory of all runs
    (meta.models_dir, else the parent of output_dir)."""
    output_dir = meta.get("output_dir")
    if all_runs:
        if meta.get("models_dir"):
            return Path(meta["models_dir"])
        return Path(output_dir).parent if output_dir else None
    if meta.get("logging_dir"):
        return Path(meta["logging_dir"])
    return Path(output_dir) if output_dir else None


def tb(
    ctx: typer.Context,
    all_runs: Annotated[
        bool,
        typer.Option(
            "--all", help="Show every run of the project (meta.models_dir or output_dir's parent)."
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the tensorboard command instead of running it.")
    ] = False,
    logdir: Annotated[
        str | None,
        typer.Option(
            "--logdir", help="Log directory to use instead of the config's meta.logging_dir."
        ),
    ] = None,
) -> None:
    """Run TensorBoard on the selected config's logs (meta.logging_dir, else meta.output_dir).

    Arguments after `--` go to tensorboard, e.g. `forgather tb -- --port 6007 --bind_all`.
    """
    from forgather.cli.checkpoint import project_meta

    extra = list(ctx.args)
    if logdir is not None:
        chosen = Path(logdir)
    else:
        chosen = choose_logdir(project_meta(ctx), all_runs)
        if chosen is None:
            raise common.project_error(
                "no log directory: the config's meta target has no output_dir/logging_dir "
                "(or there is no project); use --logdir"
            )
    command = tensorboard_command(chosen, extra)
    if dry_run:
        typer.echo(shlex.join(command))
        return
    if not chosen.exists():
        typer.secho(f"warning: {chosen} does not exist (yet)", fg="yellow", err=True)
    try:
        code = subprocess.call(command)
    except FileNotFoundError:
        raise common.project_error(
            "tensorboard is not installed (pip install tensorboard)"
        ) from None
    except KeyboardInterrupt:
        code = 0
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("tb", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})(
        tb
    )
