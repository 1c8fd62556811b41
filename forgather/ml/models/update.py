"""`forgather update-model SRC DST`: bring a model directory saved by an older forgather to the
current format and code, proven by equal logits.

A saved forgather directory carries the model code of the forgather that wrote it, and its
config.json records that code's format (`forgather_format`; absent before format 1). Updating:

1. reads SRC's config and weights and applies the migrations from its format to the current one
   (config fields and parameter names; each migration is one entry of `MIGRATIONS`);
2. builds the model with the current code from the migrated config and weights;
3. loads SRC with its own saved code (as transformers would, `trust_remote_code`) and compares the
   two models' logits on a prompt — the current code must compute what the model was trained
   with, or nothing is written;
4. writes DST (the current code, the format stamp, the tokenizer and generation config).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from forgather.errors import ForgatherError
from forgather.ml.models.transformer.artefact import FORMAT


class UpdateError(ForgatherError):
    """The directory cannot be updated as asked."""


@dataclass(frozen=True)
class Migration:
    """From format `source` to `source + 1`: what changes in config.json and in parameter names."""

    source: int
    description: str
    config: Callable[[dict[str, Any]], dict[str, Any]]
    state: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def _keep(value: Any) -> Any:
    return value


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        0,
        "format 1: config.json records its format; the directory's code gains the components "
        "registry (custom_components.py) and artefact.py, and `attention` becomes a config field "
        "(default 'causal', the only attention before)",
        config=lambda fields: {**fields, "attention": fields.get("attention", "causal")},
        state=_keep,
    ),
)


@dataclass
class Updated:
    source: Path
    destination: Path
    from_format: int
    to_format: int
    migrations: list[str]
    max_abs_diff: float


def saved_format(fields: dict[str, Any]) -> int:
    """The format a config.json was written in (0: before formats were recorded)."""
    return int(fields.get("forgather_format", 0))


def migrate(
    fields: dict[str, Any], state: dict[str, torch.Tensor]
) -> tuple[dict[str, Any], dict[str, torch.Tensor], list[str]]:
    """`fields` and `state` of a saved model brought to the current format, and what was done."""
    version = saved_format(fields)
    if version > FORMAT:
        raise UpdateError(
            f"the model was saved by a newer forgather (format {version}); this one reads formats "
            f"up to {FORMAT}: update forgather instead"
        )
    done = []
    for migration in MIGRATIONS:
        if migration.source >= version:
            fields, state = migration.config(dict(fields)), migration.state(dict(state))
            done.append(migration.description)
    return {**fields, "forgather_format": FORMAT}, state, done


def update_model(
    src: str | Path,
    dst: str | Path,
    tolerance: float = 1e-4,
    say: Callable[[str], None] = lambda line: None,
) -> Updated:
    """Write `dst`, the model directory `src` in the current format (see the module docstring)."""
    from transformers import AutoModelForCausalLM

    from forgather.ml.convert.convert import max_logit_difference
    from forgather.ml.models.loading import check_code_dir, saved_dtype_name
    from forgather.ml.models.save import check_new_model_dir, write_new_model_dir
    from forgather.ml.models.transformer import ForgatherConfig, ForgatherForCausalLM

    src, dst = Path(src), check_new_model_dir(dst)
    fields = _read_config(src)
    if fields.get("model_type") != ForgatherConfig.model_type:
        raise UpdateError(
            f"{src / 'config.json'}: model_type {fields.get('model_type')!r} is not a forgather "
            "model; only forgather's own directories have a format to update"
        )
    if not (src / "modeling_forgather.py").is_file():
        raise UpdateError(f"{src} has no saved model code (modeling_forgather.py) to compare with")
    check_code_dir(src)
    before = AutoModelForCausalLM.from_pretrained(src, trust_remote_code=True, dtype=torch.float32)
    version = saved_format(fields)
    state = {k: v.float() for k, v in before.state_dict().items()}
    fields, state, done = migrate(fields, state)
    for description in done:
        say(f"migration: {description}")
    config_fields = {k: v for k, v in fields.items() if k not in _NOT_FIELDS}
    model = ForgatherForCausalLM(ForgatherConfig(**config_fields)).float()
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise UpdateError(
            f"{src}: the migrated weights do not fit the current model (missing "
            f"{sorted(set(missing) - tied)}, unexpected {sorted(unexpected)})"
        )
    model.tie_weights()
    model.generation_config = before.generation_config
    tokenizer = _tokenizer(src)
    difference = max_logit_difference(before.eval(), model.eval(), tokenizer)
    say(f"the current code's logits differ from the saved code's by {difference:.3g}")
    if not difference <= tolerance:
        raise UpdateError(
            f"the current code computes different logits than the code {src} was saved with "
            f"(max difference {difference:.3g} > --tolerance {tolerance:g}); nothing written"
        )
    model = model.to(getattr(torch, saved_dtype_name(src)))
    write_new_model_dir(model, dst, tokenizer)
    say(f"wrote {dst} (format {version} -> {FORMAT})")
    return Updated(src, dst, version, FORMAT, done, difference)


# config.json keys that are not ForgatherConfig arguments (transformers' bookkeeping)
_NOT_FIELDS = ("architectures", "auto_map", "transformers_version", "model_type", "_name_or_path")


def _tokenizer(src: Path) -> Any:
    """The directory's tokenizer, or None when it has none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(src, trust_remote_code=True)
    except (OSError, ValueError):
        return None


def _read_config(src: Path) -> dict[str, Any]:
    path = src / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UpdateError(f"{src} is not a model directory (no config.json)") from None
    except (OSError, ValueError) as error:
        raise UpdateError(f"cannot read {path}: {error}") from None


__all__ = ["MIGRATIONS", "Migration", "UpdateError", "Updated", "migrate", "update_model"]
