"""Stochastic rounding of fp32 values to bfloat16.

bf16 is fp32 with the low 16 mantissa bits dropped. Round-to-nearest loses any update smaller than
half a bf16 ulp of the weight (about 0.4% of its magnitude), so small optimizer steps on bf16
weights vanish. Stochastic rounding keeps them in expectation: a value `x` between the bf16
neighbours `lo <= x < hi` rounds up with probability `(x - lo) / (hi - lo)`, so `E[round(x)] = x`.

It is done on the bit pattern: add a uniform random integer in `[0, 2**16)` to the fp32 bits and
clear the low 16 bits (truncation). The carry into bit 16 happens exactly with the probability
above, for either sign (the magnitude is rounded away from zero with probability equal to the
dropped fraction). Values exact in bf16 (low bits zero) never change; +-inf stay inf; NaN stays
NaN (it is passed through explicitly: adding to a NaN's payload could otherwise turn it into inf).
Finite values within half an ulp of the largest bf16 may round up to inf, as round-to-nearest
would for the upper half of that interval.

Draws come from `torch.randint` with the given `torch.Generator` (or torch's global generator), so
a seeded generator makes the rounding reproducible on one device type.
"""

from __future__ import annotations

import torch

__all__ = ["random_bits_like", "round_to_bf16_", "stochastic_round_bf16"]

_LOW_MASK = -(1 << 16)  # int32 0xFFFF0000: keeps sign, exponent and the 7 bf16 mantissa bits


def random_bits_like(src: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform int32 values in `[0, 2**16)` of `src`'s shape and device."""
    return torch.randint(
        0, 1 << 16, src.shape, dtype=torch.int32, device=src.device, generator=generator
    )


def stochastic_round_bf16(
    src: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """`src` (fp32) rounded stochastically to a new bf16 tensor (see the module docs)."""
    if src.dtype != torch.float32:
        raise ValueError(f"stochastic_round_bf16: src must be float32, got {src.dtype}")
    src = src.contiguous()
    bits = src.view(torch.int32) + random_bits_like(src, generator)
    rounded = bits.bitwise_and_(_LOW_MASK).view(torch.float32)
    rounded = torch.where(torch.isnan(src), src, rounded)
    return rounded.to(torch.bfloat16)  # exact: the dropped bits are zero


def round_to_bf16_(
    dst: torch.Tensor, src: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Write `src` (fp32) into `dst` (bf16, same shape) with stochastic rounding; returns `dst`."""
    if dst.dtype != torch.bfloat16:
        raise ValueError(f"round_to_bf16_: dst must be bfloat16, got {dst.dtype}")
    if dst.shape != src.shape:
        raise ValueError(f"round_to_bf16_: shapes differ, dst {dst.shape} vs src {src.shape}")
    return dst.copy_(stochastic_round_bf16(src, generator))
