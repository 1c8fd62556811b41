"""`forgather update-vocab SRC DST --add-tokens FILE.yaml`: add tokens to a model and tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from forgather.cli import common

HELP = """Add tokens to a model and its tokenizer, resizing the embedding and head.

FILE.yaml names special tokens (never split), ordinary tokens, the tokenizer's pad/bos/eos/unk
tokens, the tokens that end generation and how new embedding rows start (mean of the old rows, or
zero); see docs/models. Example:

  forgather update-vocab out/tiny out/tiny-chat --add-tokens chatml.yaml

with chatml.yaml:

  special_tokens: ["<|im_start|>", "<|im_end|>"]

  pad_token: "<|pad|>"

  generation_eos: ["<|im_end|>"]
"""


def update_vocab(
    src: common.ModelSource,
    dst: common.NewModelDir,
    add_tokens: Annotated[
        Path, typer.Option("--add-tokens", help="The YAML file naming the tokens to add.")
    ],
    checkpoint: common.CheckpointChoice = None,
    init: Annotated[
        str | None,
        typer.Option(
            help="New embedding rows: mean (of the old rows) or zero; overrides the file."
        ),
    ] = None,
) -> None:
    from forgather.ml.models.vocab import update_vocab as run

    done = run(
        src,
        dst,
        add_tokens,
        checkpoint=checkpoint,
        init=init,
        say=common.progress,
    )
    typer.echo(str(done.destination))


def register(app: typer.Typer) -> None:
    app.command("update-vocab", help=HELP)(update_vocab)
