"""Muon: momentum orthogonalised by a Newton–Schulz iteration, for the hidden weight matrices.

For each matrix parameter W (m × n) with gradient G, one step is

    B ← μ·B + (1 − μ)·G                     (momentum buffer)
    U ← (1 − μ)·G + μ·B  if nesterov else B
    O ← NS(U)                               (≈ the orthogonal factor of U: its singular values → ~1)
    W ← (1 − lr·λ)·W − lr·scale(m, n)·O

where NS is `ns_steps` iterations of the quintic X ← a·X + (b·A + c·A²)·X with A = X·Xᵀ, started
from U divided by its Frobenius norm and run in bfloat16 (the iteration is self-correcting, so bf16
costs nothing in quality). `adjust_lr` picks scale(m, n):

- "match_rms_adamw" (default): 0.2·√max(m, n), so the update's RMS is AdamW's and one learning rate
  (and weight decay) serves both the Muon matrices and the AdamW parameters of a hybrid;
- "original": √max(1, m/n), the scale of the first Muon (learning rates around 0.02);
- None: 1.

Muon only makes sense for the matrices inside the network. Embeddings, the output head, norms and
biases go to AdamW: `forgather.ml.optim.make_optimizer(name="muon")` builds that hybrid by the rule
of `is_hidden_matrix`. Parameters with more than two dimensions are treated as (shape[0], rest).

Memory: one momentum buffer per parameter (AdamW keeps two). Under FSDP2 the parameters are
DTensors: the orthogonalisation needs the whole matrix, so each rank gathers the update, runs the
iteration, and keeps its own shard of the result (correct, at the price of one all-gather per
matrix per step).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from forgather.ml.optim.base import ParameterwiseOptimizer
from forgather.ml.optim.dtensor import shard_like, whole
from forgather.ml.optim.state import restore_saved_dtypes

KELLER_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""The quintic's (a, b, c): the steepest slope at zero that still keeps singular values near 1."""

ADJUST_LR = ("match_rms_adamw", "original", None)


def orthogonalize(
    matrix: torch.Tensor,
    steps: int = 5,
    coefficients: tuple[float, float, float] = KELLER_COEFFICIENTS,
    eps: float = 1e-7,
) -> torch.Tensor:
    """The Newton–Schulz approximation of `matrix`'s orthogonal factor (in bfloat16)."""
    a, b, c = coefficients
    x = matrix.to(torch.bfloat16)
    wide = x.size(0) <= x.size(1)
    if not wide:  # iterate on the smaller Gram matrix
        x = x.mT
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        polynomial = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b·A + c·A²
        x = torch.addmm(x, polynomial, x, beta=a)  # a·X + (b·A + c·A²)·X
    return x if wide else x.mT


def lr_scale(shape: torch.Size, adjust_lr: str | None) -> float:
    """The factor `adjust_lr` puts on the learning rate of a matrix of `shape`."""
    rows, cols = shape[0], math.prod(shape[1:])
    if adjust_lr == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    if adjust_lr == "original":
        return math.sqrt(max(1.0, rows / cols))
    return 1.0


class Muon(ParameterwiseOptimizer):
    """Muon over matrix parameters (see the module docs); every option may differ per group."""

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        ns_steps: int = 5,
        ns_coefficients: tuple[float, float, float] = KELLER_COEFFICIENTS,
        eps: float = 1e-7,
        adjust_lr: str | None = "match_rms_adamw",
    ):
        _check(lr >= 0, "lr", f"must be >= 0, got {lr}")
        _check(0 <= momentum < 1, "momentum", f"must be in [0, 1), got {momentum}")
        _check(weight_decay >= 0, "weight_decay", f"must be >= 0, got {weight_decay}")
        _check(ns_steps >= 1, "ns_steps", f"must be >= 1, got {ns_steps}")
        _check(len(ns_coefficients) == 3, "ns_coefficients", "must be three numbers (a, b, c)")
        _check(
            adjust_lr in ADJUST_LR, "adjust_lr", f"must be one of {ADJUST_LR}, got {adjust_lr!r}"
        )
        defaults = dict(
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            ns_steps=ns_steps,
            ns_coefficients=tuple(ns_coefficients),
            eps=eps,
            adjust_lr=adjust_lr,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            for param in group["params"]:
                if param.ndim < 2:
                    raise ValueError(
                        f"Muon: a parameter of shape {tuple(param.shape)} is not a matrix; give "
                        "vectors (norms, biases) to AdamW — make_optimizer(name='muon') does"
                    )

    def update(self, param: torch.Tensor, group: dict[str, Any]) -> None:
        grad, momentum, lr = param.grad, group["momentum"], group["lr"]
        state = self.state[param]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(grad, dtype=torch.float32)
        buffer = state["momentum_buffer"]
        buffer.lerp_(grad.float(), 1 - momentum)
        update = grad.float().lerp(buffer, momentum) if group["nesterov"] else buffer
        update = self._orthogonal(update, group).to(param.dtype)
        if group["weight_decay"]:
            param.mul_(1 - lr * group["weight_decay"])
        param.add_(update, alpha=-lr * lr_scale(param.shape, group["adjust_lr"]))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        restore_saved_dtypes(self, state_dict)  # the fp32 momentum of bf16 weights stays fp32

    @staticmethod
    def _orthogonal(update: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        steps, coefficients, eps = group["ns_steps"], group["ns_coefficients"], group["eps"]
        matrix = whole(update)  # the iteration needs the whole matrix (FSDP2: gathered)
        result = orthogonalize(matrix.flatten(1), steps, coefficients, eps).view_as(matrix)
        return shard_like(result, update)


def _check(ok: bool, option: str, message: str) -> None:
    if not ok:
        raise ValueError(f"Muon {option} {message}")


__all__ = ["KELLER_COEFFICIENTS", "Muon", "lr_scale", "orthogonalize"]
