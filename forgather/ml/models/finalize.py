"""`forgather finalize SRC DST`: the directory you hand over — the chosen checkpoint's weights
(optionally cast), the model's config and source, the tokenizer (optionally with a chat
template), the generation config; no optimizer, scheduler, RNG or trainer state. Written under a
temporary name and renamed when complete, then loaded back with plain `transformers` and checked
against the weights it was written from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from forgather.errors import ForgatherError

SAMPLE_CONVERSATION = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Hello?"},
    {"role": "assistant", "content": "Hello."},
]


class FinalizeError(ForgatherError):
    """The handoff directory cannot be written as asked."""


@dataclass
class Finalized:
    source: Path
    destination: Path
    dtype: str
    parameters: int
    chat_template: bool
    max_abs_diff: float


def read_chat_template(path: Path, tokenizer: Any) -> str:
    """The template in `path`, checked by rendering a small conversation with `tokenizer`."""
    if tokenizer is None:
        raise FinalizeError(f"--chat-template {path}: the model has no tokenizer to carry it")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise FinalizeError(f"--chat-template {path}: {error.strerror or error}") from None
    try:
        tokenizer.apply_chat_template(SAMPLE_CONVERSATION, chat_template=text, tokenize=False)
    except Exception as error:  # jinja2 syntax or runtime errors, of many kinds
        where = f" line {error.lineno}" if getattr(error, "lineno", None) else ""
        raise FinalizeError(f"--chat-template {path}{where}: {error}") from None
    return text


def finalize(
    src: str | Path,
    dst: str | Path,
    checkpoint: str | None = None,
    dtype: str = "auto",
    chat_template: str | Path | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> Finalized:
    """Write the handoff directory `dst` for the model at `src` (a model directory, a checkpoint,
    or with `checkpoint` a run's output directory: see `loading.model_source`)."""
    from forgather.ml.models.loading import (
        check_dtype,
        load_causal_lm,
        model_source,
        saved_dtype_name,
    )
    from forgather.ml.models.save import check_new_model_dir, write_new_model_dir

    check_dtype(dtype)
    dst = check_new_model_dir(dst)
    path = model_source(src, checkpoint)
    model, tokenizer, model_dir = load_causal_lm(path, "cpu", "float32", require_tokenizer=False)
    template = read_chat_template(Path(chat_template), tokenizer) if chat_template else None
    out_dtype = saved_dtype_name(model_dir) if dtype == "auto" else dtype
    model = model.to(getattr(torch, out_dtype))
    model.config.dtype = out_dtype
    if template is not None:
        tokenizer.chat_template = template
    parameters = sum(p.numel() for p in model.parameters())
    say(f"reading {path}: {type(model).__name__}, {parameters:,} parameters")
    write_new_model_dir(model, dst, tokenizer)
    difference = _reload_difference(model, dst)
    say(f"wrote {dst} ({out_dtype}); reloaded with transformers, logits differ by {difference:.3g}")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    return Finalized(path, dst, out_dtype, parameters, has_template, difference)


def _reload_difference(model: torch.nn.Module, directory: Path) -> float:
    """The largest logit difference between `model` and the directory loaded back by
    `transformers` (its own copied code for a forgather model)."""
    from transformers import AutoModelForCausalLM

    from forgather.ml.convert.convert import max_logit_difference

    loaded = AutoModelForCausalLM.from_pretrained(
        directory, trust_remote_code=True, dtype=next(model.parameters()).dtype
    ).eval()
    return max_logit_difference(model.eval(), loaded)


__all__ = ["Finalized", "FinalizeError", "finalize", "read_chat_template"]
