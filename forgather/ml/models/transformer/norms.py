"""Normalisation layers: RMSNorm and LayerNorm, chosen by name."""

from __future__ import annotations

import torch
from torch import nn

from .configuration_forgather import NORMS
from .custom_components import is_custom, lookup


class RMSNorm(nn.Module):
    """Root-mean-square normalisation with a learned per-channel gain.

    The statistic is computed in float32 whatever the input dtype; the result is cast back.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dtype)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class LayerNorm(nn.LayerNorm):
    """``torch.nn.LayerNorm`` (mean and variance, learned gain and bias)."""


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    """Build the normalisation layer named by ``kind``: "rmsnorm", "layernorm", or a component of
    your own, built as ``YourClass(dim, eps)``."""
    if is_custom(kind):
        return lookup("norm", kind, NORMS)(dim, eps)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    if kind == "layernorm":
        return LayerNorm(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}; expected 'rmsnorm' or 'layernorm'")
