"""Norms, feed-forward blocks and positional encodings in isolation."""

from __future__ import annotations

import math

import pytest
import torch

from forgather.ml.models.transformer.configuration_forgather import normalize_rope_scaling
from forgather.ml.models.transformer.feedforward import MLP, SwiGLU
from forgather.ml.models.transformer.norms import LayerNorm, RMSNorm, make_norm
from forgather.ml.models.transformer.positional import (
    RotaryEmbedding,
    alibi_bias,
    alibi_slopes,
    apply_rotary,
    rope_inv_freq,
    sinusoidal_embedding,
)

from .conftest import VOCAB, tiny_model

pytestmark = pytest.mark.unit

HEAD_DIM = 64
ORIGINAL = 256


def scaling(kind: str, factor: float = 8.0, **extra) -> dict:
    return normalize_rope_scaling({"type": kind, "factor": factor, **extra}, ORIGINAL)


# ---------------------------------------------------------------- norms and feed-forward


def test_rmsnorm_matches_definition_and_keeps_dtype():
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
    x = torch.randn(3, 5, 8)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    assert norm.to(torch.bfloat16)(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_make_norm():
    assert isinstance(make_norm("rmsnorm", 4, 1e-5), RMSNorm)
    layer = make_norm("layernorm", 4, 1e-5)
    assert isinstance(layer, LayerNorm) and layer.eps == 1e-5
    with pytest.raises(ValueError, match="unknown norm"):
        make_norm("batchnorm", 4, 1e-5)


def test_feedforward_blocks():
    x = torch.randn(2, 3, 8)
    swiglu = SwiGLU(8, 16, "silu")
    expected = swiglu.down_proj(torch.nn.functional.silu(swiglu.gate_proj(x)) * swiglu.up_proj(x))
    torch.testing.assert_close(swiglu(x), expected)
    mlp = MLP(8, 32, "gelu")
    torch.testing.assert_close(mlp(x), mlp.down_proj(torch.nn.functional.gelu(mlp.up_proj(x))))


# ---------------------------------------------------------------- RoPE


def test_plain_rope_frequencies():
    inv_freq, scale = rope_inv_freq(HEAD_DIM, 10000.0)
    expected = 1.0 / 10000.0 ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM)
    torch.testing.assert_close(inv_freq, expected.float())
    assert scale == 1.0
    custom, _ = rope_inv_freq(HEAD_DIM, 500000.0)
    assert custom[1:].lt(inv_freq[1:]).all()  # larger theta: lower frequencies


def test_rope_rotation_is_relative():
    """q(m) . k(n) depends only on m - n."""
    rope = RotaryEmbedding(HEAD_DIM)
    q, k = torch.randn(1, 1, 1, HEAD_DIM), torch.randn(1, 1, 1, HEAD_DIM)

    def score(m, n):
        cq, sq = rope(torch.tensor([[m]]))
        ck, sk = rope(torch.tensor([[n]]))
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum()

    torch.testing.assert_close(score(7, 3), score(104, 100), atol=1e-4, rtol=1e-5)
    # and rotation keeps the norm
    c, s = rope(torch.tensor([[37]]))
    torch.testing.assert_close(apply_rotary(q, c, s).norm(), q.norm())


@pytest.mark.parametrize("kind", ["linear", "llama3", "ntk_by_parts", "yarn"])
def test_factor_one_equals_plain_rope(kind):
    plain, _ = rope_inv_freq(HEAD_DIM)
    scaled, scale = rope_inv_freq(HEAD_DIM, scaling=scaling(kind, factor=1.0))
    torch.testing.assert_close(scaled, plain)
    assert scale == 1.0


def test_linear_scaling_is_position_interpolation():
    rope_plain = RotaryEmbedding(HEAD_DIM)
    rope_linear = RotaryEmbedding(HEAD_DIM, scaling=scaling("linear", factor=4.0))
    positions = torch.arange(0, 1024, 4)[None]
    cos_l, sin_l = rope_linear(positions)
    cos_p, sin_p = rope_plain(positions // 4)
    torch.testing.assert_close(cos_l, cos_p, atol=1e-5, rtol=0)
    torch.testing.assert_close(sin_l, sin_p, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["llama3", "ntk_by_parts", "yarn"])
def test_by_parts_scalings_keep_high_and_interpolate_low_frequencies(kind):
    """High-frequency dims (many rotations within the original context) equal plain RoPE at every
    position; low-frequency dims (less than one rotation) are interpolated by ``factor``."""
    factor = 8.0
    plain, _ = rope_inv_freq(HEAD_DIM)
    scaled, _ = rope_inv_freq(HEAD_DIM, scaling=scaling(kind, factor=factor))
    rotations = ORIGINAL * plain / (2 * math.pi)  # rotations over the original context
    if kind == "llama3":
        high, low = rotations > 4.0, rotations < 1.0  # high_freq_factor, low_freq_factor
    else:
        high, low = rotations > 32.0, rotations < 1.0  # beta(_fast), alpha/beta_slow
    assert high.any() and low.any()
    torch.testing.assert_close(scaled[high], plain[high])
    torch.testing.assert_close(scaled[low], plain[low] / factor)
    middle = ~(high | low)
    assert (scaled[middle] <= plain[middle]).all()
    assert (scaled[middle] >= plain[middle] / factor).all()
    assert (scaled[1:] <= scaled[:-1]).all()  # still monotone in the channel index

    # so the high-frequency channels of cos/sin equal plain RoPE within the original context
    positions = torch.arange(ORIGINAL)[None]
    cos_s, _ = RotaryEmbedding(HEAD_DIM, scaling=scaling(kind, factor=factor))(positions)
    cos_p, _ = RotaryEmbedding(HEAD_DIM)(positions)
    channels = torch.cat([high, high])
    mscale = 0.1 * math.log(factor) + 1.0 if kind == "yarn" else 1.0
    torch.testing.assert_close(cos_s[..., channels], mscale * cos_p[..., channels])


def test_yarn_attention_factor():
    assert RotaryEmbedding(HEAD_DIM, scaling=scaling("yarn", 4.0)).attention_scale == pytest.approx(
        0.1 * math.log(4.0) + 1.0
    )
    assert (
        RotaryEmbedding(
            HEAD_DIM, scaling=scaling("yarn", 4.0, attention_factor=1.0)
        ).attention_scale
        == 1.0
    )


@pytest.mark.parametrize(
    "rope_scaling",
    [
        None,
        {"type": "linear", "factor": 4.0},
        {"type": "llama3", "factor": 8.0, "original_max_position_embeddings": 16},
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
        {"type": "ntk_by_parts", "factor": 4.0, "original_max_position_embeddings": 16},
    ],
)
def test_scaled_rope_model_is_finite_beyond_original_context(rope_scaling):
    model = tiny_model(rope_scaling=rope_scaling, rope_theta=5000.0)
    ids = torch.randint(3, VOCAB, (1, 48))
    with torch.no_grad():
        out = model(ids, position_ids=torch.arange(1000, 1048)[None]).logits
    assert torch.isfinite(out).all()


def test_rope_scaling_validation():
    assert normalize_rope_scaling(None, 10) is None
    full = normalize_rope_scaling({"type": "llama3", "factor": 8}, 2048)
    assert full == {
        "type": "llama3",
        "factor": 8.0,
        "original_max_position_embeddings": 2048,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
    }
    with pytest.raises(ValueError, match="one of"):
        normalize_rope_scaling({"type": "dynamic", "factor": 2}, 10)
    with pytest.raises(ValueError, match="factor"):
        normalize_rope_scaling({"type": "yarn"}, 10)
    with pytest.raises(ValueError, match="unknown rope_scaling keys"):
        normalize_rope_scaling({"type": "linear", "factor": 2, "beta": 3}, 10)
    with pytest.raises(ValueError, match=">= 1"):
        normalize_rope_scaling({"type": "linear", "factor": 0.5}, 10)


# ---------------------------------------------------------------- ALiBi and sinusoidal


def test_alibi_slopes():
    torch.testing.assert_close(alibi_slopes(4), torch.tensor([2**-2, 2**-4, 2**-6, 2**-8]))
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    six = alibi_slopes(6)  # 4 slopes of n=4, then every other slope of n=8
    torch.testing.assert_close(six, torch.tensor([2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]))


def test_alibi_bias_is_linear_in_distance():
    bias = alibi_bias(torch.tensor([0.5]), torch.arange(3, 6), torch.arange(6))
    assert bias.shape == (1, 3, 6)
    assert bias[0, 2].tolist() == [-2.5, -2.0, -1.5, -1.0, -0.5, 0.0]


def test_sinusoidal_embedding_values():
    emb = sinusoidal_embedding(torch.tensor([[0, 3]]), 6)
    assert emb.shape == (1, 2, 6)
    assert emb[0, 0].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    for i in range(3):
        angle = 3 / 10000 ** (2 * i / 6)
        assert emb[0, 1, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
        assert emb[0, 1, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
