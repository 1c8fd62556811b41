"""`forgather update-model SRC DST`: a model directory saved by an older forgather, in the current
format and code."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from forgather.cli import common

HELP = """Bring a model directory saved by an older forgather to the current format: config and
parameter-name migrations, the current model code, and a format stamp in config.json.

Nothing is written unless the current code computes the same logits (within --tolerance) as the
code the directory was saved with, loaded from the directory itself. Example:

  forgather update-model old_models/run1 models/run1
"""


def update_model(
    src: Annotated[Path, typer.Argument(help="A forgather model directory saved by any version.")],
    dst: common.NewModelDir,
    tolerance: Annotated[
        float, typer.Option(help="Largest logit difference accepted between old and new code.")
    ] = 1e-4,
) -> None:
    from forgather.ml.models.update import update_model as run

    done = run(src, dst, tolerance=tolerance, say=common.progress)
    typer.echo(str(done.destination))


def register(app: typer.Typer) -> None:
    app.command("update-model", help=HELP)(update_model)
