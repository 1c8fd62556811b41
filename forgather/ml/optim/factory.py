"""Optimizer factories: every optimizer by name, weight decay kept off biases, norms and (optionally)
embeddings, matrix optimizers paired with AdamW for the parameters that are not hidden matrices.

A factory is called by the trainer with the model's named parameters, so in a config
`optimizer_factory: !partial:forgather.ml.optim:make_optimizer {lr: 3.0e-4, weight_decay: 0.1}`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch
from torch import nn

from forgather.ml.optim.adafactor import Adafactor
from forgather.ml.optim.apollo import Apollo, apollo_mini
from forgather.ml.optim.multiopt import Multiopt
from forgather.ml.optim.muon import Muon
from forgather.ml.optim.sinkgd import SinkGD

EMBEDDING_NAMES = ("embed", "wte", "wpe")
"""Name fragments of token and position embeddings."""

HEAD_NAMES = ("lm_head",)
"""Name fragments of the output head (tied to the embedding, it is listed under the embedding)."""


def is_embedding(name: str) -> bool:
    """Whether the parameter called `name` is a token or position embedding."""
    lowered = name.lower()
    return any(fragment in lowered for fragment in EMBEDDING_NAMES)


def is_no_decay(name: str, param: nn.Parameter, decay_embeddings: bool = True) -> bool:
    """True for parameters that should get no weight decay: biases and norm weights (fewer than 2
    dims, or "norm" in the name), and embeddings when `decay_embeddings` is False."""
    if param.ndim < 2 or "norm" in name.lower() or name.endswith(".bias"):
        return True
    return not decay_embeddings and is_embedding(name)


def is_hidden_matrix(name: str, param: nn.Parameter) -> bool:
    """Whether a matrix optimizer (Muon, Apollo, SinkGD) takes this parameter: a weight with two or
    more dimensions that is not an embedding or the output head. Everything else (embeddings, the
    head, norms, biases) goes to AdamW."""
    lowered = name.lower()
    return (
        param.ndim >= 2
        and not is_embedding(name)
        and not any(fragment in lowered for fragment in HEAD_NAMES)
    )


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
    momentum: float | None = None,
    decay_embeddings: bool = True,
    **kwargs,
) -> torch.optim.Optimizer:
    """The optimizer called `name` (one of `OPTIMIZERS`) over the trainable parameters, weight
    decay kept off biases and norms; extra kwargs go to the named optimizer (e.g. AdamW's `fused`,
    Muon's `ns_steps`); `momentum` is SGD's (default 0) and Muon's (default 0.95).

    The matrix optimizers ("muon", "apollo", "apollo_mini", "sinkgd") take the hidden matrices
    (`is_hidden_matrix`) and leave embeddings, head, norms and biases to AdamW (`lr`, `betas`,
    `eps`, `weight_decay`), as one `Multiopt`.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    named = [(n, p) for n, p in named_parameters if p.requires_grad]
    settings = _Settings(lr, weight_decay, tuple(betas), eps, momentum, decay_embeddings, kwargs)
    return _BUILDERS[name](named, settings)


class _Settings(NamedTuple):
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    eps: float
    momentum: float | None
    decay_embeddings: bool
    extra: dict


def _groups(named: list, settings: _Settings) -> list[dict]:
    return weight_decay_groups(
        named, settings.weight_decay, decay_embeddings=settings.decay_embeddings
    )


def _adamw(named: list, s: _Settings) -> torch.optim.Optimizer:
    return torch.optim.AdamW(_groups(named, s), lr=s.lr, betas=s.betas, eps=s.eps, **s.extra)


def _sgd(named: list, s: _Settings) -> torch.optim.Optimizer:
    return torch.optim.SGD(_groups(named, s), lr=s.lr, momentum=s.momentum or 0.0, **s.extra)


def _with_adamw_rest(
    named: list, s: _Settings, build_matrices: Callable[[list[nn.Parameter]], torch.optim.Optimizer]
) -> torch.optim.Optimizer:
    """`build_matrices(hidden matrices)` and AdamW for the rest, as one `Multiopt`."""
    matrices = [p for n, p in named if is_hidden_matrix(n, p)]
    rest = [(n, p) for n, p in named if not is_hidden_matrix(n, p)]
    optimizers = []
    if matrices:
        optimizers.append(build_matrices(matrices))
    if rest:
        rest_groups = _groups(rest, s)
        optimizers.append(torch.optim.AdamW(rest_groups, lr=s.lr, betas=s.betas, eps=s.eps))
    return Multiopt(optimizers)


def _muon(named: list, s: _Settings) -> torch.optim.Optimizer:
    def build(matrices: list[nn.Parameter]) -> torch.optim.Optimizer:
        momentum = {} if s.momentum is None else {"momentum": s.momentum}
        return Muon(matrices, lr=s.lr, weight_decay=s.weight_decay, **momentum, **s.extra)

    return _with_adamw_rest(named, s, build)


def _apollo(named: list, s: _Settings, mini: bool = False) -> torch.optim.Optimizer:
    def build(matrices: list[nn.Parameter]) -> torch.optim.Optimizer:
        extra = dict(s.extra)
        if not mini:  # rank 128 (the paper's), at most the smallest matrix side
            extra.setdefault("rank", min(128, *(min(p.shape) for p in matrices)))
        make = apollo_mini if mini else Apollo
        return make(matrices, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay, **extra)

    return _with_adamw_rest(named, s, build)


def _adafactor(named: list, s: _Settings) -> torch.optim.Optimizer:
    """Adafactor at the trainer's learning rate (HF's external-lr setting: no relative step, no
    parameter scaling), no first moment unless `beta1` is given."""
    settings = {"relative_step": False, "scale_parameter": False, **s.extra}
    return Adafactor(_groups(named, s), lr=s.lr, **settings)


def _sinkgd(named: list, s: _Settings) -> torch.optim.Optimizer:
    def build(matrices: list[nn.Parameter]) -> torch.optim.Optimizer:
        return SinkGD(matrices, lr=s.lr, weight_decay=s.weight_decay, **s.extra)

    return _with_adamw_rest(named, s, build)


_BUILDERS: dict[str, Callable[[list, _Settings], torch.optim.Optimizer]] = {
    "adamw": _adamw,
    "sgd": _sgd,
    "muon": _muon,
    "apollo": _apollo,
    "apollo_mini": functools.partial(_apollo, mini=True),
    "adafactor": _adafactor,
    "sinkgd": _sinkgd,
}

OPTIMIZERS = tuple(_BUILDERS)
"""The optimizer names `make_optimizer` (and `trainer_args.optim`) know."""


__all__ = [
    "OPTIMIZERS",
    "is_embedding",
    "is_hidden_matrix",
    "is_no_decay",
    "make_optimizer",
    "weight_decay_groups",
]
