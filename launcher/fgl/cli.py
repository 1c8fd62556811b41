"""Command-line entry point of fgl (console script ``fgl = fgl.cli:main``)."""

from __future__ import annotations

from typing import Annotated

import typer

from fgl import __version__

HELP = f"""fgl {__version__}: launch forgather across the machines of a LAN.

fgl starts the same forgather container image on every node of a LAN and gives
torchrun on each node a matched rendezvous (one endpoint, one run id, the node
count and each node's rank), so a multi-node job starts from a single command.

This release only reports versions; the commands that start and stop jobs on
nodes arrive in later releases.
"""

app = typer.Typer(
    name="fgl",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"fgl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the fgl version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    pass


def docker_engine_version(timeout: float = 3.0) -> str | None:
    """The version of the Docker engine the Docker SDK reaches, or None if none answers."""
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        try:
            return client.version().get("Version")
        finally:
            client.close()
    except Exception:  # no SDK, no socket, refused, timed out: all mean "no engine"
        return None


@app.command("version")
def version_command() -> None:
    """Print the fgl version and, when a Docker engine is reachable, the engine's version."""
    typer.echo(f"fgl {__version__}")
    engine = docker_engine_version()
    if engine:
        typer.echo(f"docker engine {engine}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
