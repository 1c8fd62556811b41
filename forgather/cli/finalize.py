"""`forgather finalize SRC DST`: a clean handoff model directory from a run or checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from forgather.cli import common

HELP = """Write the model directory you hand over: the chosen weights, config, source, tokenizer
(optionally with a chat template) and generation config — no training state.

The directory loads with plain transformers (AutoModelForCausalLM.from_pretrained(DST,
trust_remote_code=True) for a forgather model); it is loaded back and compared before the command
ends. Examples:

  forgather finalize out/run1 release/run1 --checkpoint best --dtype bfloat16

  forgather finalize out/run1/checkpoints/checkpoint-800 release/chat --chat-template chatml.jinja

  forgather finalize out/run1 release/run1-int8 --quantize int8       # needs torchao

--quantize stores the linear layers' weights quantised by torchao (int8: per channel, any
device; int4: groups of --group-size, CUDA only, bfloat16 compute); loading the result needs
torchao too. The printed logit difference is then the quantisation's.
"""


def finalize(
    src: common.ModelSource,
    dst: common.NewModelDir,
    checkpoint: common.CheckpointChoice = None,
    dtype: common.WeightsDtype = "auto",
    chat_template: Annotated[
        Path | None,
        typer.Option(help="A Jinja chat template file for the tokenizer (checked by rendering)."),
    ] = None,
    quantize: Annotated[
        str | None,
        typer.Option(help="Weight-only quantisation with torchao: int8 or int4 (CUDA only)."),
    ] = None,
    group_size: Annotated[
        int, typer.Option(help="int4: weights per quantisation group (32, 64, 128, 256).")
    ] = 128,
    device: Annotated[
        str, typer.Option(help="Where to quantise and check the model: cpu, cuda, auto.")
    ] = "cpu",
) -> None:
    from forgather.ml.models.finalize import finalize as run

    done = run(
        src,
        dst,
        checkpoint=checkpoint,
        dtype=dtype,
        chat_template=chat_template,
        quantize=quantize,
        group_size=group_size,
        device=device,
        say=common.progress,
    )
    typer.echo(str(done.destination))


def register(app: typer.Typer) -> None:
    app.command("finalize", help=HELP)(finalize)
