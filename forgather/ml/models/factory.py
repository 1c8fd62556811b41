"""Building models from configuration files.

Templates refer to these callables, e.g.::

    model: !partial:forgather.ml.models.factory:build_model
      preset: tiny_llama_4m
      attention_backend: flex

HF-native architectures work too: build a ``transformers`` config (``!call:transformers:LlamaConfig``)
and pass it to :func:`hf_model_from_config`; to fine-tune a trained model, :func:`pretrained_model`
loads it from a directory or checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PretrainedConfig

from .presets import preset as _preset
from .transformer import ForgatherConfig, ForgatherForCausalLM, ForgatherModel

_registered = False


def register_auto_classes() -> None:
    """Opt in: make ``AutoConfig``/``AutoModel*`` resolve ``forgather-causal-lm`` to forgather's
    own classes in this process (``AutoModelForCausalLM.from_config(ForgatherConfig(...))`` works,
    and saved directories then load with the installed code instead of their copied source)."""
    global _registered
    if _registered:
        return
    AutoConfig.register(ForgatherConfig.model_type, ForgatherConfig, exist_ok=True)
    AutoModel.register(ForgatherConfig, ForgatherModel, exist_ok=True)
    AutoModelForCausalLM.register(ForgatherConfig, ForgatherForCausalLM, exist_ok=True)
    _registered = True


def model_config(preset: str | None = None, **kwargs: Any) -> ForgatherConfig:
    """A :class:`ForgatherConfig` from keyword arguments, optionally on top of a named preset."""
    if preset is not None:
        kwargs = _preset(preset, **kwargs)
    return ForgatherConfig(**kwargs)


def build_model(
    config: ForgatherConfig | None = None,
    preset: str | None = None,
    dtype: torch.dtype | str | None = None,
    **config_kwargs: Any,
) -> ForgatherForCausalLM:
    """A freshly initialised :class:`ForgatherForCausalLM`.

    Either pass a ready ``config`` or the config fields (optionally on top of a ``preset``).
    ``dtype`` (e.g. ``"bfloat16"``) casts the parameters after initialisation.
    """
    if config is None:
        config = model_config(preset=preset, **config_kwargs)
    elif preset is not None or config_kwargs:
        raise ValueError("pass either config or preset/config fields, not both")
    model = ForgatherForCausalLM(config)
    if dtype is not None:
        model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    return model


def pretrained_model(
    path: str,
    dtype: str = "auto",
    checkpoint: str | None = None,
    trust_remote_code: bool = True,
) -> nn.Module:
    """A trained causal LM to fine-tune, in train mode on the CPU (the trainer places it).

    ``path``: a local model directory (a Hugging Face model you downloaded, a forgather output
    directory) or a checkpoint; with ``checkpoint`` (latest, best or a name) a run's output
    directory. ``dtype``: ``auto`` (as saved), ``float32``, ``bfloat16`` or ``float16``. Loads as
    forgather's own commands do (``forgather.ml.models.loading.load_causal_lm``): a directory's
    code runs only under ``trust_remote_code`` and the code-ownership check.
    """
    from .loading import load_causal_lm, model_source

    model, _, _ = load_causal_lm(
        model_source(path, checkpoint),
        device="cpu",
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        require_tokenizer=False,
    )
    return model.train()


def pretrained_tokenizer(
    path: str, checkpoint: str | None = None, trust_remote_code: bool = True
) -> Any:
    """The tokenizer saved with a trained model: what a config that fine-tunes it with
    :func:`pretrained_model` tokenizes its data with (same ``path`` and ``checkpoint``)."""
    from .loading import load_tokenizer_of, model_source

    return load_tokenizer_of(model_source(path, checkpoint), trust_remote_code)


def hf_model_from_config(
    config: PretrainedConfig | dict[str, Any], model_type: str | None = None, **kwargs: Any
) -> nn.Module:
    """A freshly initialised ``AutoModelForCausalLM`` for any transformers config.

    ``config`` is a config object (e.g. ``transformers.LlamaConfig(...)``) or a dict of its fields
    together with ``model_type`` (e.g. ``"llama"``). ``kwargs`` go to ``from_config``
    (``dtype``, ``attn_implementation``, ``trust_remote_code``...).
    """
    if isinstance(config, dict):
        fields = dict(config)
        model_type = model_type or fields.pop("model_type", None)
        if model_type is None:
            raise ValueError("a config dict needs a model_type (e.g. 'llama')")
        config = AutoConfig.for_model(model_type, **fields)
    return AutoModelForCausalLM.from_config(config, **kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for param in model.parameters():  # parameters() already de-duplicates shared tensors
        if trainable_only and not param.requires_grad:
            continue
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
    return total
