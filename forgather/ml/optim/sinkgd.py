"""SinkGD: stateless gradient descent on Sinkhorn-normalised (row- and column-balanced) gradients.

SinkGD (Scetbon, Ma, Gong, Meeds, 2025, "Gradient Multi-Normalization for Stateless and Scalable
LLM Training", arXiv:2502.06742) normalises each weight-matrix gradient G (m x n) with L
alternating passes of its SR-Sinkhorn procedure, then takes a plain SGD step:

    X = G
    repeat L times:
        X = sqrt(n) * Q(X)^-1 X      rows to l2 norm sqrt(n)      (Q: diagonal of row norms)
        X = sqrt(m) * X R(X)^-1      columns to l2 norm sqrt(m)   (R: diagonal of column norms)
    W = W (1 - lr wd) - lr X                                       (decoupled weight decay)

At the fixed point every row and every column has root-mean-square entry 1 (so AdamW-like learning
rates apply); after the L-th pass the columns have their target norm exactly and the rows
approximately, the error shrinking with L. Norms are floored at 1e-30, so a zero row or column
stays zero instead of producing NaN. The paper keeps no state for these matrices.

Options (every one settable per param group; every group records all of them):

- lr (1e-3), weight_decay (0.0): for every parameter of the group.
- sinkhorn (True): whether the group's 2-D parameters get SinkGD; False gives the whole group
  AdamW.
- sinkhorn_iters (5): L.
- betas, eps: the AdamW fallback's (torch's defaults).

Default rule: parameters with ndim == 2 in a group with `sinkhorn=True` (the default) get SinkGD,
embeddings and heads included unless grouped with `sinkhorn=False`; 1-D and >2-D parameters get
AdamW with the group's lr, as the paper trains non-matrix parameters with Adam.

Memory per SinkGD parameter: no optimizer state but a scalar step count (AdamW: 2 * m * n; the count
is there because checkpoint loaders refuse a trainable parameter without state), one full-size
temporary while stepping. AdamW-fallback parameters keep AdamW's state (step, exp_avg, exp_avg_sq).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from forgather.ml.optim.apollo import adamw_step, check_adamw_settings
from forgather.ml.optim.base import ParameterwiseOptimizer
from forgather.ml.optim.dtensor import shard_like, whole

_NORM_FLOOR = 1e-30


def sinkhorn_normalize(grad: Tensor, iters: int = 5) -> Tensor:
    """`iters` alternating passes scaling rows of the 2-D `grad` to l2 norm sqrt(n), then columns
    to sqrt(m) (a new tensor, in float32 for half-precision input, else in `grad`'s dtype)."""
    if grad.ndim != 2:
        raise ValueError(f"sinkhorn_normalize takes a 2-D tensor, got shape {tuple(grad.shape)}")
    rows, cols = grad.shape
    dtype = grad.dtype if grad.dtype in (torch.float32, torch.float64) else torch.float32
    x = grad.to(dtype=dtype, copy=True)
    for _ in range(iters):
        x.mul_(math.sqrt(cols) / x.norm(dim=1, keepdim=True).clamp_min_(_NORM_FLOOR))
        x.mul_(math.sqrt(rows) / x.norm(dim=0, keepdim=True).clamp_min_(_NORM_FLOOR))
    return x


class SinkGD(ParameterwiseOptimizer):
    """SinkGD with an AdamW fallback (see the module docs for the algorithm and default rule)."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        sinkhorn: bool = True,
        sinkhorn_iters: int = 5,
    ):
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "sinkhorn": sinkhorn,
            "sinkhorn_iters": sinkhorn_iters,
        }
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_adamw_settings(group)
        if not isinstance(group["sinkhorn"], bool):
            raise ValueError(f"sinkhorn must be True or False, got {group['sinkhorn']!r}")
        iters = group["sinkhorn_iters"]
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
            raise ValueError(f"sinkhorn_iters must be a positive integer, got {iters!r}")

    def update(self, param: Tensor, group: dict[str, Any]) -> None:
        if not (group["sinkhorn"] and param.ndim == 2):
            adamw_step(param, self.state[param], group)
            return
        state = self.state[param]
        if not state:  # a step count only: checkpoint loaders expect every param a state
            state["step"] = torch.tensor(0.0)
        state["step"] += 1
        lr = float(group["lr"])
        update = sinkhorn_normalize(whole(param.grad), group["sinkhorn_iters"])
        update = shard_like(update, param)  # FSDP2: normalised whole, applied per shard
        if group["weight_decay"] != 0.0:
            param.mul_(1.0 - lr * group["weight_decay"])
        param.add_(update.to(param.dtype), alpha=-lr)


__all__ = ["SinkGD", "sinkhorn_normalize"]
