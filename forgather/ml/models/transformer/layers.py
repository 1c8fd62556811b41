"""Decoder layers: pre-LN, post-LN and DeepNet (DeepNorm) residual arrangements.

* pre-LN:  ``x = x + attn(norm(x)); x = x + ffn(norm(x))`` (the stack ends with a final norm);
* post-LN: ``x = norm(x + attn(x)); x = norm(x + ffn(x))``;
* DeepNet: ``x = norm(alpha * x + attn(x)); x = norm(alpha * x + ffn(x))`` with
  ``alpha = (2N)^(1/4)`` for N decoder layers; the matching ``beta`` init gain lives in the model's
  ``_init_weights`` (Wang et al., 2022).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .attention import AttentionMask, CausalSelfAttention
from .configuration_forgather import ATTENTIONS, LAYER_TYPES
from .custom_components import is_custom, lookup
from .feedforward import make_feedforward
from .norms import make_norm


def make_attention(config: Any, layer_idx: int) -> nn.Module:
    """The attention named by ``config.attention``: "causal" (``CausalSelfAttention``) or a
    component of your own, built as ``YourClass(config, layer_idx)`` and called like it."""
    if is_custom(config.attention):
        return lookup("attention", config.attention, ATTENTIONS)(config, layer_idx)
    return CausalSelfAttention(config, layer_idx)


class DecoderLayer(nn.Module):
    """Attention + feed-forward sub-layers with their norms; subclasses arrange the residuals."""

    def __init__(self, config: Any, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.self_attn = make_attention(config, layer_idx)
        self.mlp = make_feedforward(config)
        self.attn_norm = make_norm(config.norm, config.hidden_size, config.norm_eps)
        self.mlp_norm = make_norm(config.norm, config.hidden_size, config.norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
        mask: AttentionMask,
        cache: Any = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError


class PreLNDecoderLayer(DecoderLayer):
    def forward(self, hidden_states, rotary, mask, cache=None, output_attentions=False):
        attn, weights = self.self_attn(
            self.attn_norm(hidden_states), rotary, mask, cache, output_attentions
        )
        hidden_states = hidden_states + self.dropout(attn)
        hidden_states = hidden_states + self.dropout(self.mlp(self.mlp_norm(hidden_states)))
        return hidden_states, weights


class PostLNDecoderLayer(DecoderLayer):
    residual_scale = 1.0

    def forward(self, hidden_states, rotary, mask, cache=None, output_attentions=False):
        alpha = self.residual_scale
        attn, weights = self.self_attn(hidden_states, rotary, mask, cache, output_attentions)
        hidden_states = self.attn_norm(alpha * hidden_states + self.dropout(attn))
        hidden_states = self.mlp_norm(alpha * hidden_states + self.dropout(self.mlp(hidden_states)))
        return hidden_states, weights


class DeepNetDecoderLayer(PostLNDecoderLayer):
    def __init__(self, config: Any, layer_idx: int):
        super().__init__(config, layer_idx)
        self.residual_scale = float(config.deepnet_alpha_value)


LAYER_CLASSES = {
    "pre_ln": PreLNDecoderLayer,
    "post_ln": PostLNDecoderLayer,
    "deepnet": DeepNetDecoderLayer,
}


def make_layer(config: Any, layer_idx: int) -> nn.Module:
    """The decoder layer named by ``config.layer_type``: "pre_ln", "post_ln", "deepnet", or a
    component of your own, built as ``YourClass(config, layer_idx)`` and called like them."""
    if is_custom(config.layer_type):
        return lookup("layer_type", config.layer_type, LAYER_TYPES)(config, layer_idx)
    try:
        cls = LAYER_CLASSES[config.layer_type]
    except KeyError:
        raise ValueError(
            f"unknown layer_type {config.layer_type!r}; expected one of {sorted(LAYER_CLASSES)}"
        ) from None
    return cls(config, layer_idx)


def has_final_norm(config: Any) -> bool:
    """Whether the stack ends with a norm: pre-LN layers need one, post-LN and DeepNet layers end
    with their own; a layer class of your own says so with a ``final_norm`` attribute (default
    True)."""
    if is_custom(config.layer_type):
        cls = lookup("layer_type", config.layer_type, LAYER_TYPES)
        return bool(getattr(cls, "final_norm", True))
    return config.layer_type == "pre_ln"
