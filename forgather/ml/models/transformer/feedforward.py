"""Position-wise feed-forward blocks: SwiGLU (gated) and the plain two-layer MLP."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.activations import ACT2FN

from .configuration_forgather import FEEDFORWARDS
from .custom_components import is_custom, lookup


class SwiGLU(nn.Module):
    """``down(act(gate(x)) * up(x))``; with ``act = silu`` this is SwiGLU (Shazeer, 2020)."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str = "silu", bias=False):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.gate_proj.init_role = self.up_proj.init_role = "value"  # see the model's _init_weights
        self.down_proj.init_role = "out"
        self.act = ACT2FN[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class MLP(nn.Module):
    """``down(act(up(x)))``: the original transformer feed-forward block."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str = "gelu", bias=False):
        super().__init__()
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.up_proj.init_role = "value"  # see the model's _init_weights
        self.down_proj.init_role = "out"
        self.act = ACT2FN[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.up_proj(x)))


def make_feedforward(config: Any) -> nn.Module:
    """The feed-forward block named by ``config.feedforward``: "swiglu", "mlp", or a component of
    your own, built as ``YourClass(config)``."""
    kind = config.feedforward
    if is_custom(kind):
        return lookup("feedforward", kind, FEEDFORWARDS)(config)
    args = (config.hidden_size, config.intermediate_size, config.hidden_act, config.mlp_bias)
    if kind == "swiglu":
        return SwiGLU(*args)
    if kind == "mlp":
        return MLP(*args)
    raise ValueError(f"unknown feedforward {kind!r}; expected 'swiglu' or 'mlp'")
