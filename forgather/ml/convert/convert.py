"""`forgather convert SRC DST`: a Hugging Face model directory becomes a forgather one, and a
forgather model directory or checkpoint a Hugging Face one — the direction follows from what SRC
is. The converted model's logits on a prompt are compared with the source's (both float32 on the
CPU) before anything is written: a difference above the tolerance stops with nothing written."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from forgather.errors import ForgatherError
from forgather.ml.convert import registry
from forgather.ml.convert.registry import UnsupportedFeature

DEFAULT_PROMPT = "It is a truth universally acknowledged, that a single man in possession"


class ConversionError(ForgatherError):
    """The conversion cannot be done or did not reproduce the source's logits."""


@dataclass
class Conversion:
    """What `convert` did."""

    direction: str  # "hf -> forgather" or "forgather -> hf"
    converter: str
    source: Path
    destination: Path
    model_type: str  # the Hugging Face model_type on the HF side
    parameters: int
    max_abs_diff: float
    dtype: str


def convert(
    src: str | Path,
    dst: str | Path,
    dtype: str = "auto",
    checkpoint: str | None = None,
    model_type: str | None = None,
    prompt: str = DEFAULT_PROMPT,
    tolerance: float = 1e-3,
    say: Callable[[str], None] = lambda line: None,
) -> Conversion:
    """Convert the model at `src` (a model directory or a checkpoint) into a
    new directory `dst` (`src` with `checkpoint`: see `loading.model_source`); `model_type` forces the Hugging Face family (reading: the converter to
    use; writing: the model_type to write, e.g. "mistral")."""
    from forgather.ml.models.loading import (
        check_dtype,
        load_causal_lm,
        model_source,
        saved_dtype_name,
    )
    from forgather.ml.models.save import (
        check_new_model_dir,
        is_forgather_model,
        write_new_model_dir,
    )

    check_dtype(dtype)
    dst = check_new_model_dir(dst)
    path = model_source(src, checkpoint)
    _refuse_own_components(path)
    source, tokenizer, model_dir = load_causal_lm(
        path, "cpu", "float32", trust_remote_code=False, require_tokenizer=False
    )
    saved_dtype = saved_dtype_name(model_dir)
    parameters = sum(p.numel() for p in source.parameters())
    if is_forgather_model(source):
        converter = (
            registry.for_hf(model_type) if model_type else registry.for_forgather(source.config)
        )
        hf_type = model_type or converter.hf_model_type_for(source.config)
        say(f"reading {path}: a forgather model, {parameters:,} parameters")
        target = _hf_model(converter.from_forgather_config(source.config, hf_type))
        transform, direction = converter.to_hf_state, "forgather -> hf"
    else:
        hf_type = source.config.model_type
        converter = registry.for_hf(model_type or hf_type)
        say(f"reading {path}: {type(source).__name__} ({hf_type}), {parameters:,} parameters")
        from forgather.ml.models.transformer import ForgatherConfig, ForgatherForCausalLM

        fields = converter.to_forgather_config(source.config)
        target = ForgatherForCausalLM(ForgatherConfig(**fields)).float()
        transform, direction = converter.to_forgather_state, "hf -> forgather"
    _copy_weights(source, target, transform)
    target.generation_config = source.generation_config
    target.eval()
    difference = max_logit_difference(source, target, tokenizer, prompt)
    say(f"{direction} ({converter.name}): logits on the prompt differ by at most {difference:.3g}")
    if not difference <= tolerance:
        raise ConversionError(
            f"the converted model's logits differ from the source's by {difference:.3g} (more "
            f"than --tolerance {tolerance:g}); nothing written"
        )
    out_dtype = saved_dtype if dtype == "auto" else dtype
    target = target.to(getattr(torch, out_dtype))
    target.config.dtype = out_dtype
    write_new_model_dir(target, dst, tokenizer)
    say(f"wrote {dst} ({out_dtype})")
    return Conversion(
        direction, converter.name, path, dst, hf_type, parameters, difference, out_dtype
    )


def _refuse_own_components(path: str | Path) -> None:
    """A forgather model with components of its own has no Hugging Face family: say so (before
    its code would be loaded)."""
    import json

    from forgather.ml.models.loading import find_model_dir
    from forgather.ml.models.transformer.custom_components import COMPONENT_FIELDS, is_custom

    try:
        model_dir, _ = find_model_dir(path)
        fields = json.loads((model_dir / "config.json").read_text())
    except Exception:
        return  # loading reports what is wrong with the directory
    own = [f"{f}={fields[f]}" for f in COMPONENT_FIELDS if is_custom(fields.get(f))]
    if own:
        raise UnsupportedFeature(
            f"{model_dir} uses components of its own ({', '.join(own)}); no Hugging Face family "
            "has them"
        )


def _hf_model(hf_config: Any) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)


def _copy_weights(source: torch.nn.Module, target: torch.nn.Module, transform: Callable) -> None:
    state = transform(source.state_dict())
    expected = target.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise UnsupportedFeature(
            "the parameters do not map one to one: "
            + "; ".join(
                part
                for part in (
                    f"the target also has {', '.join(missing[:4])}" if missing else "",
                    f"the source also has {', '.join(extra[:4])}" if extra else "",
                )
                if part
            )
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise UnsupportedFeature(
                f"{name}: shape {tuple(tensor.shape)} in the source, "
                f"{tuple(expected[name].shape)} in the target"
            )
    target.load_state_dict(state, strict=True)


def max_logit_difference(
    source: torch.nn.Module,
    target: torch.nn.Module,
    tokenizer: Any = None,
    prompt: str = DEFAULT_PROMPT,
) -> float:
    """The largest absolute difference of the two models' logits on `prompt` (token ids
    0..15 when there is no tokenizer)."""
    tokens = list(tokenizer(prompt)["input_ids"]) if tokenizer is not None else []
    if not tokens:  # no tokenizer, or one without a vocabulary
        tokens = [i % source.config.vocab_size for i in range(16)]
    ids = torch.tensor([tokens], dtype=torch.long, device=next(source.parameters()).device)
    with torch.no_grad():
        a = source(input_ids=ids, use_cache=False).logits.float()
        b = target(input_ids=ids, use_cache=False).logits.float()
    return float((a - b).abs().max())


__all__ = ["Conversion", "ConversionError", "convert", "max_logit_difference"]
