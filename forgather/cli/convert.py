"""`forgather convert SRC DST`: Hugging Face <-> forgather model directories."""

from __future__ import annotations

from typing import Annotated

import typer

from forgather.cli import common

HELP = """Convert a model between Hugging Face and forgather (the direction follows from SRC).

A Hugging Face directory (Llama, Mistral without a sliding window, Qwen3, GPT-2) becomes a
forgather model directory; a forgather model directory or checkpoint becomes a Hugging Face one
(the family its architecture matches: Llama unless --model-type says e.g. mistral, Qwen3 with
query/key norms, GPT-2 with learned positions and LayerNorm). The converted
model's logits on a prompt are compared with the source's before anything is written, and the
largest difference is printed. Examples:

  forgather convert ~/models/Llama-3.2-1B out/llama-fg

  forgather convert out/run1 out/run1-hf --checkpoint best --dtype bfloat16
"""


def convert(
    src: common.ModelSource,
    dst: common.NewModelDir,
    dtype: common.WeightsDtype = "auto",
    checkpoint: common.CheckpointChoice = None,
    model_type: Annotated[
        str | None,
        typer.Option(
            help="The Hugging Face family: reading, the converter to use; writing, the model_type "
            "to write (llama, mistral, qwen3, gpt2)."
        ),
    ] = None,
    prompt: Annotated[str | None, typer.Option(help="Text whose logits are compared.")] = None,
    tolerance: Annotated[
        float, typer.Option(help="Largest logit difference accepted (float32, on the CPU).")
    ] = 1e-3,
) -> None:
    from forgather.ml.convert.convert import DEFAULT_PROMPT
    from forgather.ml.convert.convert import convert as run

    done = run(
        src,
        dst,
        dtype=dtype,
        checkpoint=checkpoint,
        model_type=model_type,
        prompt=prompt or DEFAULT_PROMPT,
        tolerance=tolerance,
        say=common.progress,
    )
    typer.echo(str(done.destination))


def register(app: typer.Typer) -> None:
    app.command("convert", help=HELP)(convert)
