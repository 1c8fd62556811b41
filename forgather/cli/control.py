"""`forgather control`: list running training jobs, show their status, save / stop / abort them."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from forgather.cli import common

control_app = typer.Typer(
    name="control",
    help=(
        "Control running training jobs (those with TrainerControlCallback): "
        "list, status, save, stop, save-stop, abort. JOB is a job id or a unique prefix of one."
    ),
    no_args_is_help=True,
)

JobArg = Annotated[str, typer.Argument(help="Job id or a unique prefix of one", show_default=False)]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", help="Seconds to wait for the job to answer.")
]


def fail(message: str) -> typer.Exit:
    typer.secho(f"error: {common.one_line(message)}", fg="red", err=True)
    return typer.Exit(1)


def _client(job: str, timeout: float) -> Any:
    from forgather.ml.train.control import ControlClient, ControlError, find_job

    try:
        return ControlClient(find_job(job), timeout=timeout)
    except ControlError as error:
        raise fail(str(error)) from None


@control_app.command("list")
def list_command(
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for each job's status.")
    ] = 1.0,
) -> None:
    """List running jobs (entries of dead processes are removed) with their progress."""
    from rich.table import Table

    from forgather.ml.train.control import ControlClient, ControlError, jobs_dir, list_jobs

    jobs = list_jobs()
    if not jobs:
        typer.echo(f"no running jobs (in {jobs_dir()})")
        return
    table = Table(box=None, header_style="bold")
    for column in ("JOB", "PID", "STEP", "LOSS", "STARTED", "ADDRESS", "OUTPUT DIR"):
        table.add_column(column)
    for job in jobs:
        step = loss = "?"
        try:
            status = ControlClient(job, timeout=timeout).status()
            step = f"{status.get('global_step', '?')}/{status.get('max_steps') or '?'}"
            loss = f"{float(status['loss']):.4g}" if status.get("loss") is not None else "-"
        except (ControlError, TypeError, ValueError):
            step = "unreachable"
        table.add_row(
            job.job_id,
            str(job.pid),
            step,
            loss,
            job.started,
            job.url,
            job.output_dir or "",
        )
    common.console().print(table)


@control_app.command("status")
def status_command(job: JobArg, timeout: TimeoutOpt = 5.0) -> None:
    """Show a job's status: step, max steps, last loss, learning rate, job info."""
    from forgather.ml.train.control import ControlError

    client = _client(job, timeout)
    try:
        status = client.status()
    except ControlError as error:
        raise fail(str(error)) from None
    width = max((len(k) for k in status), default=0)
    for key, value in status.items():
        typer.echo(f"{key.ljust(width)}  {value}")


def _sender(command: str, description: str):
    def send(job: JobArg, timeout: TimeoutOpt = 5.0) -> None:
        from forgather.ml.train.control import ControlError

        client = _client(job, timeout)
        try:
            client.send(command)
        except ControlError as error:
            raise fail(str(error)) from None
        typer.echo(f"sent {command} to job {client.info.job_id}")

    send.__doc__ = description
    send.__name__ = command.replace("-", "_")
    return send


for _command, _description in (
    ("save", "Save a checkpoint at the end of the current step; training goes on."),
    ("stop", "Stop training after the current step (the trainer saves its final checkpoint)."),
    ("save-stop", "Save a checkpoint and stop after the current step."),
    ("abort", "Stop after the current step WITHOUT saving a checkpoint."),
):
    control_app.command(_command)(_sender(_command, _description))


def register(app: typer.Typer) -> None:
    app.add_typer(control_app, name="control")
