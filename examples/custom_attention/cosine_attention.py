"""Components of this project's model: scaled cosine attention and ScaleNorm.

The config names them by file and class (templates/configs/train_cosine_attention.yaml), forgather
builds its model with them, and a saved model directory carries this file, so it loads with
``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` where forgather is not
installed. Hence the rule for a component file: it imports only the standard library, torch and
transformers.

The calling conventions (what forgather's model passes):

* attention: ``Class(config, layer_idx)``; ``forward(hidden_states, rotary, mask, cache,
  output_attentions)`` returns ``(output, attention_weights_or_None)``. ``rotary`` is ``(cos, sin)``
  of shape (batch, seq, head_dim) or None, ``mask.dense()`` a boolean (batch or 1, 1, queries,
  keys) mask where True may attend (``mask.causal_only``: no padding nor document boundaries), and
  ``cache`` a transformers ``Cache`` (``k, v = cache.update(k, v, layer_idx)``) or None;
* norm: ``Class(dim, eps)``; ``forward(x)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    cos, sin = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


class CosineAttention(nn.Module):
    """Scaled cosine attention (Swin Transformer v2): queries and keys are L2-normalised, so a score
    is a cosine in [-1, 1], times a learned per-head temperature (kept in log space, capped at 100).
    Scores cannot grow with the activations, which keeps attention logits tame at high learning
    rates."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)
        self.o_proj.init_role = "out"  # forgather's init scales output projections by their role
        self.log_temperature = nn.Parameter(torch.full((self.num_heads, 1, 1), math.log(10.0)))

    def forward(self, hidden_states, rotary, mask, cache=None, output_attentions=False):
        batch, length, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(batch, length, self.num_heads, self.head_dim)
        k = self.k_proj(hidden_states).view(batch, length, self.num_kv_heads, self.head_dim)
        v = self.v_proj(hidden_states).view(batch, length, self.num_kv_heads, self.head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if rotary is not None:
            cos, sin = rotary
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        q = q * self.log_temperature.clamp(max=math.log(100.0)).exp().to(q.dtype)
        causal = mask.causal_only and mask.query_length == mask.key_length
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=None if causal else mask.dense(),
            is_causal=causal,
            scale=1.0,  # the temperature is the scale
            enable_gqa=self.num_kv_heads != self.num_heads,
        )
        out = out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)
        return self.o_proj(out), None


class ScaleNorm(nn.Module):
    """``g * x / ||x||`` with one learned gain g (Nguyen & Salazar, 2019), initialised to sqrt(dim)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gain = nn.Parameter(torch.tensor(math.sqrt(dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.float().norm(dim=-1, keepdim=True).clamp(min=self.eps)
        return (self.gain * x.float() / norm).to(x.dtype)
