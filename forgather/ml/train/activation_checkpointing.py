"""Activation checkpointing of a model's layers (`gradient_checkpointing`): which layers
(`gradient_checkpointing_every`) and which of their activations are recomputed
(`gradient_checkpointing_policy`: "full" keeps only each layer's input; "selective" keeps the
outputs of the matrix multiplications and attention, and recomputes the cheap element-wise ops —
norms, activations, residual adds — so the backward repeats no matmul)."""

from __future__ import annotations

import functools
from typing import Any

import torch

from forgather.ml.train.args import CHECKPOINT_POLICIES


@functools.cache
def _saved_ops() -> frozenset:
    """The ops whose outputs the selective policy keeps: matmuls and every SDPA kernel."""
    aten = torch.ops.aten
    names = (
        "mm", "addmm", "bmm", "baddbmm", "linear",
        "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu",
        "_flash_attention_forward", "_efficient_attention_forward",
    )  # fmt: skip
    return frozenset(getattr(aten, name).default for name in names if hasattr(aten, name))


def _selective_policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
    from torch.utils.checkpoint import CheckpointPolicy

    if op in _saved_ops():
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def checkpoint_options(policy: str) -> dict[str, Any]:
    """Keyword arguments for `torch.utils.checkpoint.checkpoint` under `policy`."""
    options: dict[str, Any] = {"use_reentrant": False}
    if policy == "selective":
        from torch.utils.checkpoint import create_selective_checkpoint_contexts

        options["context_fn"] = functools.partial(
            create_selective_checkpoint_contexts, _selective_policy
        )
    return options


def enable(model: torch.nn.Module, every: int = 1, policy: str = "full") -> None:
    """Turn on activation recomputation (transformers >= 5 name first, then the older one), of
    every `every`-th layer (forgather models), keeping what `policy` says."""
    if every > 1:
        inner = getattr(model, "model", None)
        if not hasattr(inner, "gradient_checkpointing_every"):
            raise ValueError(
                f"gradient_checkpointing_every={every}: {type(model).__name__} recomputes every "
                "layer or none (forgather causal LMs can skip layers); use 1"
            )
        inner.gradient_checkpointing_every = every
    options = checkpoint_options(policy)
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    else:
        raise ValueError(
            "gradient_checkpointing=True but the model has no gradient_checkpointing_enable()"
        )


__all__ = ["CHECKPOINT_POLICIES", "checkpoint_options", "enable"]
