"""Writing self-describing Hugging Face model directories.

A directory written by :func:`save_model_dir` for a forgather model holds ``config.json`` (with an
``auto_map`` pointing at the copied source), every ``*.py`` file of
``forgather/ml/models/transformer/``, ``model.safetensors``, ``generation_config.json`` and the
tokenizer files, so that::

    AutoModelForCausalLM.from_pretrained(output_dir, trust_remote_code=True)

works in an environment with only torch and transformers installed.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from forgather.errors import ForgatherError
from forgather.ml.unwrap import model_class_name, unwrap_model

from .transformer import ForgatherConfig
from .transformer.artefact import PACKAGE_DIR, package_source_files, write_model_code

__all__ = [
    "PACKAGE_DIR",
    "ModelDirExists",
    "check_new_model_dir",
    "is_forgather_model",
    "package_source_files",
    "save_model_config",
    "save_model_dir",
    "write_new_model_dir",
]


def is_forgather_model(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) == ForgatherConfig.model_type


def save_model_dir(
    model: nn.Module,
    output_dir: str | os.PathLike,
    tokenizer: Any = None,
    safe_serialization: bool = True,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save ``model`` (and ``tokenizer``) as a directory loadable with ``from_pretrained``.

    Forgather models additionally get their source files and an ``auto_map`` so that they load
    with ``trust_remote_code=True`` where forgather is not installed. Any other ``PreTrainedModel``
    (e.g. ``LlamaForCausalLM``) is saved with its own ``save_pretrained``.
    ``safe_serialization=False`` writes ``pytorch_model.bin`` instead of ``model.safetensors``.
    Returns the directory.
    """
    model = unwrap_model(model)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"{type(model).__name__} is not a transformers PreTrainedModel")

    save_kwargs: dict[str, Any] = {}
    if state_dict is not None:
        save_kwargs["state_dict"] = state_dict
    accepts_safe = "safe_serialization" in inspect.signature(model.save_pretrained).parameters
    if accepts_safe:
        save_kwargs["safe_serialization"] = safe_serialization
    model.save_pretrained(out, **save_kwargs)
    if not safe_serialization and not accepts_safe:
        _convert_to_torch_bin(model, out, state_dict)

    _save_loading_files(model, out, tokenizer)
    return out


class ModelDirExists(ForgatherError):
    """The directory a new model directory was to be written to is taken."""


def check_new_model_dir(output_dir: str | os.PathLike) -> Path:
    """`output_dir` when it does not exist or is an empty directory, else one clear error (commands
    call it before their work, so a taken destination costs nothing)."""
    out = Path(output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelDirExists(f"{out} already exists; give a new directory")
    return out


def write_new_model_dir(
    model: nn.Module, output_dir: str | os.PathLike, tokenizer: Any = None
) -> Path:
    """`save_model_dir` into a directory that must not exist yet (an empty one is taken), written
    under a temporary name beside it and renamed when complete: a failure leaves nothing behind
    and never a half-written model directory."""
    import tempfile

    out = check_new_model_dir(output_dir)
    if out.exists():
        out.rmdir()
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        save_model_dir(model, temp, tokenizer=tokenizer)
        temp.rename(out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return out


def save_model_config(
    model: nn.Module, output_dir: str | os.PathLike, tokenizer: Any = None
) -> Path:
    """Everything ``from_pretrained`` needs besides the weights: ``config.json``, the generation
    config, the tokenizer and (forgather models) the model's source. Training checkpoints keep this
    beside their sharded weights, so each one is loadable and consolidatable on its own."""
    model = unwrap_model(model)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "save_pretrained"):
        raise TypeError(f"{type(model).__name__} has no Hugging Face config to save")
    config.save_pretrained(out)
    if is_forgather_model(model):  # what the model's own save_pretrained adds to a full save
        write_model_code(model, out)
    _save_loading_files(model, out, tokenizer)
    return out


def _save_loading_files(model: nn.Module, out: Path, tokenizer: Any) -> None:
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and not (out / "generation_config.json").exists():
        generation_config.save_pretrained(out)

    config_path = out / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    # The model's own class (save_pretrained of an FSDP2-sharded model would name FSDP<Class>).
    config["architectures"] = [model_class_name(model)]
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    if tokenizer is not None:
        tokenizer.save_pretrained(out)


def _convert_to_torch_bin(
    model: nn.Module, out: Path, state_dict: dict[str, torch.Tensor] | None
) -> None:
    """Replace the safetensors weights just written by a ``pytorch_model.bin``."""
    weights = state_dict if state_dict is not None else model.state_dict()
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    weights = {k: v.detach().cpu().contiguous() for k, v in weights.items() if k not in tied}
    for path in out.glob("model*.safetensors*"):
        path.unlink()
    torch.save(weights, out / "pytorch_model.bin")
