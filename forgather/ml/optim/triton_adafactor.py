"""Triton kernels for Adafactor's factored (ndim >= 2) parameter update.

`Adafactor` keeps the row/column second-moment reductions in torch (they are small outputs) and
hands the elementwise part here. With `r` the row factors and `c` the column factors already
normalised (see `Adafactor`), the update of a parameter `P` with gradient `G` is

    U_ij  = G_ij / sqrt(max(r_i * c_j, eps_sq))
    scale = alpha / max(1, RMS(U) / clip_threshold),   alpha = param_scale * step_size
    U    <- scale * U;  with momentum: M <- beta1 * M + (1 - beta1) * U;  U <- M
    P    <- P * (1 - decay) - U,   decay = weight_decay * (alpha if decay_scaled else 1)

computed in fp32 in two passes over the tensor, without materialising `U`: pass 1 writes one
partial sum of `U_ij**2` per block (summed by torch, deterministically, into a 1-element device
tensor), pass 2 recomputes `U`, applies the scale, momentum and weight decay and writes the
parameter in its own dtype, for bf16 optionally with stochastic rounding (random bits from
Triton's Philox `tl.randint(seed, offset)`, so a given seed gives the same rounding every run).
`param_scale` is a 1-element device tensor too, so the step needs no host synchronisation.

Leading dimensions beyond the last two are batch dimensions: the parameter is treated as
`[B, m, n]` with `r` of shape `[B, m]` and `c` of shape `[B, n]` (all contiguous).

Triton is imported lazily: this module imports on a machine without it. `TRITON_INTERPRET=1`,
set before triton is first imported in the process, runs the kernels on CPU tensors through
Triton's interpreter (slow; for tests).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

__all__ = ["factored_update_", "interpreter_enabled", "triton_available"]

_BLOCK = 1024


@functools.cache
def triton_available() -> bool:
    """Whether `import triton` works here."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True


def interpreter_enabled() -> bool:
    """Whether Triton's CPU interpreter is switched on (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


@functools.cache
def _kernels(interpret: bool) -> tuple[Any, Any]:
    """Build (and cache) the two kernels; `interpret` keys the cache (triton reads the env)."""
    import triton
    import triton.language as tl

    @triton.jit
    def sumsq_kernel(
        g_ptr, r_ptr, c_ptr, partial_ptr, numel, n_cols, mn, eps_sq, BLOCK: tl.constexpr
    ):
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        # U_ij = G_ij / sqrt(max(r_i * c_j, eps_sq)); repeated in apply_kernel (triton resolves
        # a helper @jit function through module globals, which this lazily built module lacks)
        r = tl.load(r_ptr + offs // n_cols, mask=mask, other=1.0)
        c = tl.load(c_ptr + (offs // mn) * n_cols + offs % n_cols, mask=mask, other=1.0)
        u = tl.where(mask, g * tl.rsqrt(tl.maximum(r * c, eps_sq)), 0.0)
        tl.store(partial_ptr + pid, tl.sum(u * u, axis=0))

    @triton.jit
    def apply_kernel(
        g_ptr,
        p_ptr,
        r_ptr,
        c_ptr,
        m_ptr,
        sumsq_ptr,
        pscale_ptr,
        numel,
        n_cols,
        mn,
        eps_sq,
        step_size,
        clip_threshold,
        beta1,
        weight_decay,
        seed,
        HAS_MOMENTUM: tl.constexpr,
        DECAY_SCALED: tl.constexpr,
        STOCHASTIC_ROUND: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        rms = tl.sqrt(tl.load(sumsq_ptr) / numel)
        alpha = tl.load(pscale_ptr) * step_size
        scale = alpha / tl.maximum(rms / clip_threshold, 1.0)

        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        r = tl.load(r_ptr + offs // n_cols, mask=mask, other=1.0)
        c = tl.load(c_ptr + (offs // mn) * n_cols + offs % n_cols, mask=mask, other=1.0)
        u = g * tl.rsqrt(tl.maximum(r * c, eps_sq)) * scale
        if HAS_MOMENTUM:
            m = tl.load(m_ptr + offs, mask=mask, other=0.0)
            m = beta1 * m + (1.0 - beta1) * u
            tl.store(m_ptr + offs, m, mask=mask)
            u = m
        decay = weight_decay * alpha if DECAY_SCALED else weight_decay
        p_raw = tl.load(p_ptr + offs, mask=mask, other=0.0)
        p = p_raw.to(tl.float32) * (1.0 - decay) - u
        if STOCHASTIC_ROUND:
            bits = p.to(tl.int32, bitcast=True)
            noise = (tl.randint(seed, offs) & 0xFFFF).to(tl.int32)
            rounded = ((bits + noise) & -65536).to(tl.float32, bitcast=True)
            p = tl.where(p != p, p, rounded)  # NaN passes through
        tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=mask)

    return sumsq_kernel, apply_kernel


def factored_update_(
    param: torch.Tensor,
    grad: torch.Tensor,
    row_factor: torch.Tensor,
    col_factor: torch.Tensor,
    exp_avg: torch.Tensor | None,
    *,
    param_scale: torch.Tensor,
    step_size: float,
    eps_sq: float,
    clip_threshold: float,
    beta1: float | None,
    weight_decay: float,
    decay_scaled: bool,
    stochastic_rounding: bool,
    seed: int = 0,
) -> None:
    """Apply one factored Adafactor update to `param` in place (see the module docs).

    `param` (fp32/bf16/fp16) and `grad` are contiguous with ndim >= 2; `row_factor` is fp32 of
    shape `param.shape[:-1]`, `col_factor` fp32 of shape `param.shape[:-2] + param.shape[-1:]`;
    `exp_avg` the fp32 momentum buffer (updated in place) when `beta1` is not None;
    `param_scale` a 1-element fp32 tensor on the parameter's device. `stochastic_rounding`
    applies to bf16 parameters only, with random bits from `seed`.
    """
    if param.ndim < 2 or param.shape != grad.shape:
        raise ValueError(f"factored_update_: param {param.shape} / grad {grad.shape} mismatch")
    if not (param.is_contiguous() and grad.is_contiguous()):
        raise ValueError("factored_update_: param and grad must be contiguous")
    if (beta1 is None) != (exp_avg is None):
        raise ValueError("factored_update_: exp_avg must be given exactly when beta1 is")
    sumsq_kernel, apply_kernel = _kernels(interpreter_enabled())
    numel = param.numel()
    n_cols = param.shape[-1]
    mn = param.shape[-2] * n_cols
    row = row_factor.contiguous()
    col = col_factor.contiguous()
    blocks = (numel + _BLOCK - 1) // _BLOCK
    partial = torch.empty(blocks, dtype=torch.float32, device=param.device)
    sumsq_kernel[(blocks,)](grad, row, col, partial, numel, n_cols, mn, eps_sq, BLOCK=_BLOCK)
    sumsq = partial.sum().reshape(1)
    pscale = param_scale.to(device=param.device, dtype=torch.float32).reshape(1)
    momentum = exp_avg if exp_avg is not None else partial  # a dummy pointer when unused
    apply_kernel[(blocks,)](
        grad,
        param,
        row,
        col,
        momentum,
        sumsq,
        pscale,
        numel,
        n_cols,
        mn,
        eps_sq,
        float(step_size),
        float(clip_threshold),
        float(beta1 if beta1 is not None else 0.0),
        float(weight_decay),
        int(seed),
        HAS_MOMENTUM=exp_avg is not None,
        DECAY_SCALED=decay_scaled,
        STOCHASTIC_ROUND=stochastic_rounding and param.dtype == torch.bfloat16,
        BLOCK=_BLOCK,
    )
