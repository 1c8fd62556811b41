"""`forgather finalize SRC DST`: the directory you hand over — the chosen checkpoint's weights
(optionally cast, optionally quantised weight-only to int8 or int4 with torchao), the model's
config and source, the tokenizer (optionally with a chat template), the generation config; no
optimizer, scheduler, RNG or trainer state. Written under a temporary name and renamed when
complete, then loaded back with plain `transformers` and checked against the weights it was
written from."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from forgather.errors import ForgatherError

QUANTIZATIONS = ("int8", "int4")
"""`--quantize` choices: torchao weight-only int8 (per-channel; any device) and int4 (grouped,
tinygemm's tile-packed layout: CUDA only)."""

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
    quantize: str | None = None


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
    quantize: str | None = None,
    group_size: int = 128,
    device: str = "cpu",
    say: Callable[[str], None] = lambda line: None,
) -> Finalized:
    """Write the handoff directory `dst` for the model at `src` (a model directory, a checkpoint,
    or with `checkpoint` a run's output directory: see `loading.model_source`).

    `quantize` ("int8" or "int4", with `group_size` for int4): the linear layers' weights are
    stored quantised by torchao (the head and embeddings are not); the directory's config.json
    carries the quantization_config, so transformers loads it quantised where torchao is
    installed. `device`: where the model is checked (and quantised; int4 needs "cuda")."""
    from forgather.ml.models.loading import (
        check_dtype,
        load_causal_lm,
        model_source,
        resolve_device,
        saved_dtype_name,
    )
    from forgather.ml.models.save import check_new_model_dir, write_new_model_dir

    check_dtype(dtype)
    device = resolve_device(device)
    quant_config = torchao_config(quantize, group_size, device) if quantize else None
    dst = check_new_model_dir(dst)
    path = model_source(src, checkpoint)
    model, tokenizer, model_dir = load_causal_lm(path, "cpu", "float32", require_tokenizer=False)
    template = read_chat_template(Path(chat_template), tokenizer) if chat_template else None
    out_dtype = saved_dtype_name(model_dir) if dtype == "auto" else dtype
    if quantize == "int4" and out_dtype != "bfloat16":
        if dtype != "auto":
            raise FinalizeError(f"--quantize int4 computes in bfloat16; got --dtype {dtype}")
        out_dtype = "bfloat16"
    model = model.to(getattr(torch, out_dtype))
    model.config.dtype = out_dtype
    if template is not None:
        tokenizer.chat_template = template
    parameters = sum(p.numel() for p in model.parameters())
    say(f"reading {path}: {type(model).__name__}, {parameters:,} parameters")
    if quant_config is None:
        write_new_model_dir(model, dst, tokenizer)
    else:
        say(f"quantising the linear layers' weights to {quantize} (torchao) on {device}")
        write_new_model_dir(_quantized(model, tokenizer, quant_config, device), dst, tokenizer)
    difference = _reload_difference(model.to(device), dst)
    weights = out_dtype if quantize is None else f"{quantize} weights, {out_dtype} compute"
    say(f"wrote {dst} ({weights}); reloaded with transformers, logits differ by {difference:.3g}")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    return Finalized(path, dst, out_dtype, parameters, has_template, difference, quantize)


def torchao_config(quantize: str, group_size: int, device: str) -> Any:
    """The torchao weight-only config for `--quantize`, or one clear error saying what is missing."""
    if quantize not in QUANTIZATIONS:
        raise FinalizeError(
            f"--quantize must be one of {', '.join(QUANTIZATIONS)}; got {quantize!r}"
        )
    try:
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig
    except ImportError:
        raise FinalizeError(
            "--quantize needs torchao (pip install 'forgather[quantize]'), and so does whoever "
            "loads the result"
        ) from None
    if quantize == "int8":
        return Int8WeightOnlyConfig(version=2)
    if not device.startswith("cuda"):
        raise FinalizeError(
            "--quantize int4: torchao's int4 weight-only layout (tinygemm's) runs on CUDA only, "
            "and so does the result; run with --device cuda on a GPU machine, or use int8"
        )
    if group_size not in (32, 64, 128, 256):
        raise FinalizeError(f"--group-size must be 32, 64, 128 or 256; got {group_size}")
    return Int4WeightOnlyConfig(group_size=group_size, int4_packing_format="tile_packed_to_4d")


def _quantized(model: torch.nn.Module, tokenizer: Any, config: Any, device: str) -> Any:
    """`model` loaded back by transformers with torchao quantising its linear layers (the way a
    user would quantise it; transformers records the quantization_config it then saves)."""
    from transformers import AutoModelForCausalLM, TorchAoConfig

    from forgather.ml.models.save import save_model_dir

    plain = Path(tempfile.mkdtemp(prefix="forgather-finalize-"))
    try:
        save_model_dir(model, plain, tokenizer)
        return AutoModelForCausalLM.from_pretrained(
            plain,
            trust_remote_code=True,
            dtype=next(model.parameters()).dtype,
            device_map=device,
            quantization_config=TorchAoConfig(config),
        ).eval()
    finally:
        shutil.rmtree(plain, ignore_errors=True)


def _reload_difference(model: torch.nn.Module, directory: Path) -> float:
    """The largest logit difference between `model` and the directory loaded back by
    `transformers` (its own copied code for a forgather model; quantised if it was saved so)."""
    from transformers import AutoModelForCausalLM

    from forgather.ml.convert.convert import max_logit_difference

    parameter = next(model.parameters())
    loaded = AutoModelForCausalLM.from_pretrained(
        directory, trust_remote_code=True, dtype=parameter.dtype, device_map=str(parameter.device)
    ).eval()
    return max_logit_difference(model.eval(), loaded)


__all__ = [
    "QUANTIZATIONS",
    "Finalized",
    "FinalizeError",
    "finalize",
    "read_chat_template",
    "torchao_config",
]
