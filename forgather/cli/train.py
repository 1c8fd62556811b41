"""`forgather train`: build a config's `main` target and run it, under torchrun when asked for several ranks."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from typing import Annotated

import typer

from forgather.cli import common
from forgather.cli.common import EXTRA_ARGS, OVERRIDES_HELP

# Arguments after a standalone `--` on the command line go to torchrun; `main()` moves them here
# before Typer parses the rest (Click would otherwise mix them with the config's overrides).
TORCHRUN_ARGS: list[str] = []
RESUME_PATH = "trainer_args.resume_from_checkpoint"


def under_torchrun() -> bool:
    """Whether this process is a worker that torchrun (or `fgl up`) started."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def torchrun_command(
    project_dir: str, config: str, tokens: list[str], nproc: int, torchrun_args: list[str]
) -> list[str]:
    """The torchrun command line that runs this training config on `nproc` local ranks."""
    launch = list(torchrun_args) or ["--standalone"]
    if not any(arg.startswith(("--nproc-per-node", "--nproc_per_node")) for arg in launch):
        launch.append(f"--nproc-per-node={nproc}")
    command = [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "forgather.cli.main"]
    command += ["-p", project_dir]
    if config:
        command += ["-t", config]
    return [*command, "train", *tokens]


def train(
    ctx: typer.Context,
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc", min=1, help="Processes (ranks) on this machine; >1 starts torchrun."
        ),
    ] = 1,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            envvar="FORGATHER_RESUME",
            help="Resume from a checkpoint: `latest` (the newest complete one), `auto` (the "
            "newest if there is one, else start), or a checkpoint path. Sets "
            "trainer_args.resume_from_checkpoint.",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print what would run (the torchrun command) and exit."),
    ] = False,
) -> None:
    """Train: build the config's `main` target and run it.

    One process trains in this process; `--nproc N` (or torchrun arguments after `--`, e.g.
    `-- --nnodes 2 --rdzv-endpoint host:29400`) starts torchrun, whose workers run this same command.
    Inside torchrun (or a container started by `fgl up`) it never starts another torchrun.
    """
    st = common.state(ctx)
    tokens = list(ctx.args)
    if resume is not None:
        tokens.append(f"{RESUME_PATH}={resume}")
    if under_torchrun() or (nproc == 1 and not TORCHRUN_ARGS):
        if dry_run:
            common.echo_text(
                f"would train {st.config_template or '(default config)'} in this process"
            )
            return
        project = common.load(ctx, tokens=tokens)
        script = project("main")
        if not hasattr(script, "run"):
            raise common.project_error(
                f"the `main` target of {project.config_name} builds a {type(script).__name__}, "
                "which has no run() method (training configs build a TrainingScript)"
            )
        script.run()
        return
    project_dir = str(common.find_project(st.project_dir))
    command = torchrun_command(project_dir, st.config_template, tokens, nproc, TORCHRUN_ARGS)
    if dry_run:
        common.echo_text(shlex.join(command))
        return
    raise typer.Exit(subprocess.call(command))


def register(app: typer.Typer) -> None:
    app.command("train", context_settings=EXTRA_ARGS, epilog=OVERRIDES_HELP)(train)
