"""Optimizer factories: AdamW / SGD with weight decay kept off biases, norms and (optionally) embeddings.

A factory is called by the trainer with the model's named parameters, so in a config
`optimizer_factory: !partial:forgather.ml.optim:make_optimizer {lr: 3.0e-4, weight_decay: 0.1}`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def is_no_decay(name: str, param: nn.Parameter, decay_embeddings: bool = True) -> bool:
    """True for parameters that should get no weight decay: biases and norm weights (fewer than 2
    dims, or "norm" in the name), and embeddings when `decay_embeddings` is False."""
    if param.ndim < 2 or "norm" in name.lower() or name.endswith(".bias"):
        return True
    return not decay_embeddings and ("embed" in name.lower() or "wte" in name or "wpe" in name)


def weight_decay_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    weight_decay: float,
    *,
    decay_embeddings: bool = True,
) -> list[dict]:
    """Two parameter groups (decayed, not decayed) of the trainable parameters; empty groups dropped."""
    decay, no_decay = [], []
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        (no_decay if is_no_decay(name, param, decay_embeddings) else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def make_optimizer(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    *,
    name: str = "adamw",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    momentum: float = 0.0,
    decay_embeddings: bool = True,
    **kwargs,
) -> torch.optim.Optimizer:
    """An AdamW ("adamw") or SGD ("sgd") optimizer over `weight_decay_groups(...)`; extra kwargs go to
    the torch optimizer (e.g. `fused`, `foreach`)."""
    groups = weight_decay_groups(named_parameters, weight_decay, decay_embeddings=decay_embeddings)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, **kwargs)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, **kwargs)
    raise ValueError(f"unknown optimizer {name!r} (adamw, sgd)")


__all__ = ["is_no_decay", "make_optimizer", "weight_decay_groups"]
