"""bf16 stochastic rounding: unbiased (round-to-nearest is not), only ever the two bf16
neighbours, exact on bf16 values, inf/NaN preserved, reproducible under a seeded generator."""

from __future__ import annotations

import pytest
import torch

from forgather.ml.optim.stochastic_rounding import round_to_bf16_, stochastic_round_bf16

pytestmark = pytest.mark.unit


def neighbours(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The bf16 values just below and just above `x` in magnitude (by truncating the fp32 bits)."""
    lo = (x.view(torch.int32) & -(1 << 16)).view(torch.float32)
    hi = ((x.view(torch.int32) & -(1 << 16)) + (1 << 16)).view(torch.float32)
    return lo, hi


@pytest.mark.parametrize("value", [1.0 + 0.3 * 2**-7, -3.0 - 0.8 * 2**-6, 1e-3 * (1 + 0.1 * 2**-7)])
def test_unbiased_where_round_to_nearest_is_biased(value):
    draws = 200_000
    x = torch.full((draws,), value, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    rounded = stochastic_round_bf16(x, gen).double()
    lo, hi = neighbours(x[:1])
    ulp = (hi - lo).abs().item()
    # binomial std of the mean: ulp * sqrt(p(1-p)/n) <= ulp * 0.5 / sqrt(n); allow 5 sigma
    assert abs(rounded.mean().item() - value) < 5 * ulp * 0.5 / draws**0.5
    nearest = x.to(torch.bfloat16).double().mean().item()
    assert abs(nearest - value) > 0.05 * ulp  # the bias stochastic rounding removes
    assert set(rounded.unique().tolist()) <= {lo.item(), hi.item()}


def test_random_values_round_to_a_neighbour_and_average_out():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1000, generator=gen) * 10
    lo, hi = neighbours(x)
    total = torch.zeros(1000, dtype=torch.float64)
    runs = 400
    for _ in range(runs):
        r = stochastic_round_bf16(x, gen).float()
        assert torch.all((r == lo) | (r == hi))
        total += r.double()
    ulp = (hi - lo).abs().double()
    err = (total / runs - x.double()) / ulp
    assert err.abs().mean() < 0.05  # per-value bias <= ~0.025 ulp on average at this count
    assert abs(err.mean().item()) < 0.01


def test_exact_for_bf16_values():
    gen = torch.Generator().manual_seed(2)
    b = (torch.randn(10_000, generator=gen) * 1e3).to(torch.bfloat16)
    special = torch.tensor(
        [0.0, -0.0, float("inf"), float("-inf"), 2**-130, -(2**-133), 3.3895e38],
        dtype=torch.bfloat16,
    )
    b = torch.cat([b, special])
    out = stochastic_round_bf16(b.float(), gen)
    assert torch.equal(out.view(torch.int16), b.view(torch.int16))  # bit-exact, signs of zero too


def test_inf_and_nan():
    x = torch.tensor([float("nan"), float("inf"), float("-inf"), -float("nan")])
    for seed in range(20):
        out = stochastic_round_bf16(x, torch.Generator().manual_seed(seed))
        assert torch.isnan(out[0]) and torch.isnan(out[3])
        assert out[1] == float("inf") and out[2] == float("-inf")
    # NaNs whose payload sits only in the dropped bits (or would carry into the sign) stay NaN
    payloads = torch.tensor([0x7F800001, 0x7FFFFFFF, -1], dtype=torch.int32).view(torch.float32)
    for seed in range(20):
        assert torch.isnan(
            stochastic_round_bf16(payloads, torch.Generator().manual_seed(seed))
        ).all()


def test_deterministic_under_a_seed():
    x = torch.randn(4096, generator=torch.Generator().manual_seed(3))
    a = stochastic_round_bf16(x, torch.Generator().manual_seed(7))
    b = stochastic_round_bf16(x, torch.Generator().manual_seed(7))
    c = stochastic_round_bf16(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_round_into_destination():
    x = torch.randn(3, 5)
    dst = torch.empty(3, 5, dtype=torch.bfloat16)
    out = round_to_bf16_(dst, x, torch.Generator().manual_seed(0))
    assert out is dst
    assert torch.equal(dst, stochastic_round_bf16(x, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="bfloat16"):
        round_to_bf16_(torch.empty(3, 5), x)
    with pytest.raises(ValueError, match="shapes"):
        round_to_bf16_(torch.empty(5, 3, dtype=torch.bfloat16), x)
    with pytest.raises(ValueError, match="float32"):
        stochastic_round_bf16(x.double())


def test_non_contiguous_source():
    x = torch.randn(8, 6).t()
    gen = torch.Generator().manual_seed(0)
    out = stochastic_round_bf16(x, gen)
    lo, hi = neighbours(x.contiguous())
    assert out.shape == x.shape
    assert torch.all((out.float() == lo) | (out.float() == hi))
