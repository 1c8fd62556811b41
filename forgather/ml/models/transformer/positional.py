"""Positional information: rotary embeddings (with context-extension scalings), ALiBi, sinusoidal.

* RoPE rotates query/key channel pairs by ``position * inv_freq``. The ``rope_scaling`` variants
  change ``inv_freq`` (and, for YaRN, the attention temperature):

  - ``linear``: every frequency divided by ``factor`` (position interpolation);
  - ``llama3``: wavelengths shorter than ``original / high_freq_factor`` kept, longer than
    ``original / low_freq_factor`` divided by ``factor``, linear blend in between (in 1/wavelength);
  - ``ntk_by_parts``: with ``r = original / wavelength`` (rotations over the original context),
    ``gamma = clamp((r - alpha) / (beta - alpha), 0, 1)`` and
    ``inv_freq = (1 - gamma) * inv_freq / factor + gamma * inv_freq``;
  - ``yarn``: NTK-by-parts with ``alpha = beta_slow``, ``beta = beta_fast`` plus a temperature:
    cos/sin are multiplied by ``attention_factor`` (default ``0.1 ln(factor) + 1``), which scales
    the attention logits by its square.

* ALiBi adds ``slope_h * (k - q)`` to the attention logits of head ``h``.
* Sinusoidal absolute embeddings (Vaswani et al.) are added to the token embeddings.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def rope_attention_scale(scaling: dict[str, Any] | None) -> float:
    """The cos/sin multiplier of a RoPE variant (YaRN temperature; 1 for the others)."""
    if scaling is None or (scaling.get("type") or scaling.get("rope_type")) != "yarn":
        return 1.0
    given = scaling.get("attention_factor")
    if given is not None:
        return float(given)
    factor = float(scaling["factor"])
    return 0.1 * math.log(factor) + 1.0 if factor > 1.0 else 1.0


def rope_inv_freq(
    head_dim: int, theta: float = 10000.0, scaling: dict[str, Any] | None = None
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (float32 on CPU, ``head_dim // 2``) and the cos/sin multiplier."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64, device="cpu") / head_dim
    inv_freq = 1.0 / (theta**exponents)
    if scaling is not None:
        kind = scaling.get("type") or scaling.get("rope_type")
        factor = float(scaling["factor"])
        if kind == "linear":
            inv_freq = inv_freq / factor
        elif kind in ("llama3", "ntk_by_parts", "yarn"):
            original = float(scaling["original_max_position_embeddings"])
            wavelength = 2 * math.pi / inv_freq
            if kind == "llama3":
                low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
                # Blend weight 1 keeps the frequency, 0 divides it by factor.
                keep = ((original / wavelength) - low) / (high - low)
            else:
                if kind == "ntk_by_parts":
                    alpha, beta = float(scaling["alpha"]), float(scaling["beta"])
                else:
                    alpha, beta = float(scaling["beta_slow"]), float(scaling["beta_fast"])
                keep = ((original / wavelength) - alpha) / (beta - alpha)
            keep = keep.clamp(0.0, 1.0)
            inv_freq = (1.0 - keep) * inv_freq / factor + keep * inv_freq
        else:
            raise ValueError(f"unknown rope_scaling type {kind!r}")
    return inv_freq.float(), rope_attention_scale(scaling)


class RotaryEmbedding(nn.Module):
    """Computes RoPE cos/sin tables for given positions (no parameters, no buffers).

    The inverse frequencies are derived from the config on first use and cached per device, so
    nothing is saved in, or restored from, a checkpoint (and meta-device construction is harmless).
    """

    def __init__(self, head_dim: int, theta: float = 10000.0, scaling: dict | None = None):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        self.scaling = scaling
        self.attention_scale = rope_attention_scale(scaling)
        self._inv_freq_by_device: dict[torch.device, torch.Tensor] = {}

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        cached = self._inv_freq_by_device.get(device)
        if cached is None:
            cached = rope_inv_freq(self.head_dim, self.theta, self.scaling)[0].to(device)
            self._inv_freq_by_device[device] = cached
        return cached

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``position_ids`` (batch, seq) -> ``(cos, sin)``, each float32 (batch, seq, head_dim)."""
        inv_freq = self.inv_freq(position_ids.device)
        angles = position_ids.to(torch.float32)[..., None] * inv_freq
        angles = torch.cat((angles, angles), dim=-1)
        cos, sin = angles.cos(), angles.sin()
        if self.attention_scale != 1.0:
            cos, sin = cos * self.attention_scale, sin * self.attention_scale
        return cos, sin

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, theta={self.theta}, scaling={self.scaling}"


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (batch, heads, seq, head_dim) by ``cos``/``sin`` (batch, seq, head_dim)."""
    cos = cos.unsqueeze(1).to(x.dtype)
    sin = sin.unsqueeze(1).to(x.dtype)
    return x * cos + rotate_half(x) * sin


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi head slopes: a geometric sequence from ``2^(-8/n)``; non powers of two interleave the
    slopes of the next power of two (Press et al., 2022)."""

    def geometric(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = geometric(closest)
    if closest != num_heads:
        slopes += geometric(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32, device="cpu")


def alibi_bias(
    slopes: torch.Tensor, query_positions: torch.Tensor, key_positions: torch.Tensor
) -> torch.Tensor:
    """ALiBi logit bias (heads, q_len, k_len): ``slope * (k - q)``, <= 0 for visible keys."""
    distance = key_positions[None, :].to(torch.float32) - query_positions[:, None].to(torch.float32)
    return slopes[:, None, None] * distance[None]


def sinusoidal_embedding(
    position_ids: torch.Tensor, dim: int, base: float = 10000.0
) -> torch.Tensor:
    """Absolute sinusoidal embeddings (batch, seq, dim), float32:
    ``PE[p, 2i] = sin(p / base^(2i/dim))`` and ``PE[p, 2i+1] = cos(p / base^(2i/dim))``."""
    half = dim // 2
    exponents = torch.arange(half, device=position_ids.device, dtype=torch.float32) * 2.0 / dim
    angles = position_ids.to(torch.float32)[..., None] * (base**-exponents)
    out = torch.zeros(*position_ids.shape, dim, device=position_ids.device, dtype=torch.float32)
    out[..., 0 : 2 * half : 2] = angles.sin()
    out[..., 1 : 2 * half : 2] = angles.cos()
    return out


class LearnedPositionalEmbedding(nn.Embedding):
    """Adds a learned absolute position embedding for ``position_ids`` (GPT-2's ``wpe``): one
    trained row per position up to ``max_position_embeddings``."""

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:  # type: ignore[override]
        return super().forward(position_ids).to(dtype)


class SinusoidalPositionalEmbedding(nn.Module):
    """Adds sinusoidal absolute position embeddings for ``position_ids`` (no parameters)."""

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        self.dim = dim
        self.base = base

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return sinusoidal_embedding(position_ids, self.dim, self.base).to(dtype)
