"""Adafactor (Shazeer & Stern 2018, https://arxiv.org/abs/1804.04235) with bf16 stochastic rounding.

Algorithm, for a parameter `P` with gradient `G` at step `t` (1-based), all in fp32 (or the
parameter's dtype if wider):

- second moment, `beta2_t = 1 - t**decay_rate`:
    - ndim >= 2 (factored over the last two dims, leading dims are batch dims): running means
      of `G**2 + eps1` over the rows `R` and over the columns `C`;
      `V_ij = R_i * C_j / mean(R)`;
    - ndim < 2: the full running mean `V` of `G**2 + eps1`;
- `U = G / sqrt(V)`, clipped: `U <- U / max(1, RMS(U) / clip_threshold)`;
- step size `alpha_t = rho_t * (max(eps2, RMS(P)) if scale_parameter else 1)` with
  `rho_t = lr * min(max_relative_step, 1/sqrt(t))` if `relative_step`
  (`min(1e-6 * t, 1/sqrt(t))` with `warmup_init`), else `rho_t = lr`;
- `U <- alpha_t * U`; with `beta1`: `M <- beta1 * M + (1 - beta1) * U`, `U <- M`;
- decoupled weight decay and the step: `P <- P * (1 - decay) - U` with
  `decay = weight_decay * alpha_t` (`weight_decay_mode="step_size"`) or
  `weight_decay * lr` (`"lr"`).

`eps_mode="clamp"` switches to torch's epsilon handling instead of adding `eps1` to `G**2`:
the moments average plain `G**2`, `V_ij = R_i * C_j / max(mean(R), eps1)` and
`U = G / sqrt(max(V, eps1**2))`. `eps1=None` means the parameter dtype's machine epsilon.

The learning rate and schedulers. The group's `lr` is what LR schedulers scale. With
`relative_step=False` it is the step size (times the parameter scale). With `relative_step=True`
it *multiplies* Adafactor's own relative step `min(max_relative_step, 1/sqrt(t))`; it defaults
to 1.0 there, so a scheduler's warmup/decay multiplies the relative step (and an `lr` of 0 makes
a step that only updates the statistics). `relative_step` left at None means "True iff lr is
None".

Matching other implementations (tested in tests/unit/optim/test_adafactor.py):

- `transformers.optimization.Adafactor`: the same arguments give its updates (argument names,
  order and defaults are HF's); its relative mode is ours with `lr` at the default 1.0 (HF
  ignores lr there and refuses one).
- `torch.optim.Adafactor(lr=L, beta2_decay=B, eps=(e1, e2), d=D, weight_decay=W)` (constant
  lr): `Adafactor.like_torch(params, lr=L, beta2_decay=B, eps=(e1, e2), d=D, weight_decay=W)`,
  that is `lr=1.0, relative_step=True, max_relative_step=L, scale_parameter=True,
  decay_rate=B, eps=(e1, e2), clip_threshold=D, eps_mode="clamp", weight_decay=L * W,
  weight_decay_mode="lr"`.

Low precision. State is fp32 for bf16/fp16 parameters (the parameter's dtype otherwise); the
update is computed in fp32 and written back to the parameter; for bf16 parameters with
`stochastic_rounding=True` by stochastic rounding (`forgather.ml.optim.stochastic_rounding`), so
updates far below a bf16 ulp still move the weights in expectation. The random bits of a
parameter's step `t` come from a seed derived from `(sr_seed, t)`, where `sr_seed` is drawn once
from torch's global CPU generator when the parameter's state is created and kept in the state:
a checkpoint resumes bit-exactly with no RNG state to save, and identically seeded data-parallel
replicas round identically.

Memory per parameter (state, fp32 for low-precision parameters): a `[..., m, n]` matrix keeps
`m + n` values per batch element (`exp_avg_sq_row`, `exp_avg_sq_col`), a vector of size `n`
keeps `n` (`exp_avg_sq`); `beta1` adds a full-size `exp_avg`. Plus `step` (int) and, for bf16
parameters, `sr_seed` (int). While one parameter is updated the torch kernel holds a few
parameter-sized fp32 temporaries; the Triton kernel (`kernel="triton"`, CUDA; see
`forgather.ml.optim.triton_adafactor`) none for the elementwise part.

Every hyper-parameter can be set per parameter group and every group records all of them, so
`type(opt)([{**settings, "params": [p]}])` rebuilds an equivalent optimizer for one parameter.
Gradients are consumed as found in `.grad` (accumulate / clip before `step()`); no `foreach`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import torch

from forgather.ml.optim import triton_adafactor
from forgather.ml.optim.base import ParameterwiseOptimizer
from forgather.ml.optim.state import restore_saved_dtypes
from forgather.ml.optim.stochastic_rounding import round_to_bf16_

__all__ = ["Adafactor"]

_LOW_PRECISION = (torch.bfloat16, torch.float16)
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_EPS_MODES = ("add", "clamp")
_WEIGHT_DECAY_MODES = ("step_size", "lr")
_KERNELS = ("auto", "triton", "torch")
_STATE_TENSORS = ("exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq", "exp_avg")
_MASK64 = (1 << 64) - 1


def _state_dtype(param: torch.Tensor) -> torch.dtype:
    return torch.float32 if param.dtype in _LOW_PRECISION else param.dtype


def _rms(x: torch.Tensor) -> torch.Tensor:
    """Root mean square as a 0-d tensor (fp32 accumulation for low-precision inputs)."""
    dtype = torch.float32 if x.dtype in _LOW_PRECISION else None
    return torch.linalg.vector_norm(x, dtype=dtype) / (x.numel() ** 0.5)


def _step_seed(seed: int, step: int) -> int:
    """A 62-bit seed for (parameter seed, step): splitmix64 of their combination."""
    z = (seed + step * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 2


def _is_dtensor(x: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except Exception:
        return False
    return isinstance(x, DTensor)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _check_settings(group: dict[str, Any]) -> None:
    """Validate a group's settings and resolve `lr` / `relative_step` in place."""
    lr, relative = group["lr"], group["relative_step"]
    if relative is None:
        relative = lr is None
    if not isinstance(relative, bool):
        raise ValueError(f"relative_step must be a bool or None, got {relative!r}")
    if lr is None:
        if not relative:
            raise ValueError("lr is required when relative_step=False")
        lr = 1.0
    if not _is_number(lr) or lr < 0:
        raise ValueError(f"lr must be a number >= 0, got {lr!r}")
    group["lr"], group["relative_step"] = lr, relative

    eps = group["eps"]
    if not isinstance(eps, tuple | list) or len(eps) != 2:
        raise ValueError(f"eps must be a pair (eps1, eps2), got {eps!r}")
    eps1, eps2 = eps
    if eps1 is not None and (not _is_number(eps1) or eps1 < 0):
        raise ValueError(f"eps[0] (eps1) must be None or a number >= 0, got {eps1!r}")
    if not _is_number(eps2) or eps2 < 0:
        raise ValueError(f"eps[1] (eps2) must be a number >= 0, got {eps2!r}")
    group["eps"] = (eps1, eps2)

    checks = [
        ("clip_threshold", lambda v: _is_number(v) and v > 0, "a number > 0"),
        ("decay_rate", lambda v: _is_number(v) and v <= 0, "a number <= 0"),
        ("beta1", lambda v: v is None or (_is_number(v) and 0 <= v < 1), "None or in [0, 1)"),
        ("weight_decay", lambda v: _is_number(v) and v >= 0, "a number >= 0"),
        ("max_relative_step", lambda v: _is_number(v) and v > 0, "a number > 0"),
        ("scale_parameter", lambda v: isinstance(v, bool), "a bool"),
        ("warmup_init", lambda v: isinstance(v, bool), "a bool"),
        ("stochastic_rounding", lambda v: isinstance(v, bool), "a bool"),
        ("eps_mode", lambda v: v in _EPS_MODES, f"one of {_EPS_MODES}"),
        ("weight_decay_mode", lambda v: v in _WEIGHT_DECAY_MODES, f"one of {_WEIGHT_DECAY_MODES}"),
        ("kernel", lambda v: v in _KERNELS, f"one of {_KERNELS}"),
    ]
    for name, ok, what in checks:
        if not ok(group[name]):
            raise ValueError(f"{name} must be {what}, got {group[name]!r}")
    if group["warmup_init"] and not relative:
        raise ValueError("warmup_init=True requires relative_step=True")


class Adafactor(ParameterwiseOptimizer):
    """Adafactor with factored second moments and bf16 stochastic rounding (see the module docs).

    Args:
        params: parameters or parameter groups (dicts; any option below can be set per group).
        lr: step size (`relative_step=False`) or multiplier of the relative step size
            (`relative_step=True`, default 1.0). This is what LR schedulers scale.
        eps: `(eps1, eps2)`: regulariser of the squared gradient (None: the parameter dtype's
            machine epsilon) and lower bound of the parameter scale.
        clip_threshold: update clipping threshold on RMS(update).
        decay_rate: `beta2_t = 1 - t**decay_rate` (<= 0).
        beta1: first-moment coefficient; None keeps no momentum state.
        weight_decay: decoupled weight decay coefficient (see `weight_decay_mode`).
        scale_parameter: multiply the step size by `max(eps2, RMS(param))`.
        relative_step: use the time-dependent step `min(max_relative_step, 1/sqrt(t))` (times
            lr); None means True iff `lr` is None.
        warmup_init: relative step `min(1e-6 * t, 1/sqrt(t))` instead (needs relative_step).
        max_relative_step: the cap of the relative step (the paper's 1e-2).
        eps_mode: "add" (paper/HF: eps1 added to the squared gradient) or "clamp" (torch:
            the variance estimate is clamped below by eps1**2).
        weight_decay_mode: "step_size" (HF: decay `weight_decay * alpha_t`, alpha_t the step size
            including the parameter scale) or "lr" (torch: decay `weight_decay * lr`).
        stochastic_rounding: write bf16 parameters with stochastic rounding (else nearest).
        kernel: "auto" (the PyTorch path: on an H100 at 110M parameters it beat the Triton
            kernel, which pays a launch per parameter; docs/optimizers.md), "triton" (the fused
            kernel: no parameter-sized temporaries; CUDA parameters, or CPU under
            TRITON_INTERPRET=1) or "torch".
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float | None = None,
        eps: tuple[float | None, float] = (1e-30, 1e-3),
        clip_threshold: float = 1.0,
        decay_rate: float = -0.8,
        beta1: float | None = None,
        weight_decay: float = 0.0,
        scale_parameter: bool = True,
        relative_step: bool | None = None,
        warmup_init: bool = False,
        *,
        max_relative_step: float = 1e-2,
        eps_mode: Literal["add", "clamp"] = "add",
        weight_decay_mode: Literal["step_size", "lr"] = "step_size",
        stochastic_rounding: bool = True,
        kernel: Literal["auto", "triton", "torch"] = "auto",
    ) -> None:
        defaults = {
            "lr": lr,
            "eps": eps,
            "clip_threshold": clip_threshold,
            "decay_rate": decay_rate,
            "beta1": beta1,
            "weight_decay": weight_decay,
            "scale_parameter": scale_parameter,
            "relative_step": relative_step,
            "warmup_init": warmup_init,
            "max_relative_step": max_relative_step,
            "eps_mode": eps_mode,
            "weight_decay_mode": weight_decay_mode,
            "stochastic_rounding": stochastic_rounding,
            "kernel": kernel,
        }
        super().__init__(params, defaults)

    @classmethod
    def like_torch(
        cls,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-2,
        beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3),
        d: float = 1.0,
        weight_decay: float = 0.0,
        **kwargs: Any,
    ) -> Adafactor:
        """The settings that reproduce `torch.optim.Adafactor` with the same arguments.

        Its `lr` becomes our `max_relative_step` (our `lr` is 1.0, the multiplier a scheduler
        scales) and its decay `lr * weight_decay` our `weight_decay` in "lr" mode, so the match
        is for a constant learning rate. `kwargs` (e.g. `kernel`) pass through.
        """
        return cls(
            params,
            lr=1.0,
            eps=eps,
            clip_threshold=d,
            decay_rate=beta2_decay,
            weight_decay=lr * weight_decay,
            scale_parameter=True,
            relative_step=True,
            max_relative_step=lr,
            eps_mode="clamp",
            weight_decay_mode="lr",
            **kwargs,
        )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        settings = {**self.defaults, **param_group}
        _check_settings(settings)
        for key in ("lr", "relative_step", "eps"):
            param_group[key] = settings[key]
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            for p in group["params"]:
                if not p.is_floating_point():
                    raise ValueError(f"Adafactor needs floating-point parameters, got {p.dtype}")
                if group["kernel"] == "triton":
                    self._check_triton_device(p)
        except ValueError:
            self.param_groups.pop()
            raise

    @staticmethod
    def _check_triton_device(p: torch.Tensor) -> None:
        if not triton_adafactor.triton_available():
            raise ValueError("kernel='triton' but triton cannot be imported")
        on_cpu_interpreter = p.device.type == "cpu" and triton_adafactor.interpreter_enabled()
        if not (p.is_cuda or on_cpu_interpreter):
            raise ValueError(
                f"kernel='triton' needs CUDA parameters (or TRITON_INTERPRET=1 on CPU), got a "
                f"parameter on {p.device}; use kernel='auto' or 'torch'"
            )

    def _use_triton(self, p: torch.Tensor, group: dict[str, Any]) -> bool:
        kernel = group["kernel"]
        if kernel == "torch" or p.ndim < 2:
            return False
        eligible = p.dtype in _KERNEL_DTYPES and p.is_contiguous() and not _is_dtensor(p)
        if kernel == "auto":  # measured slower at 110M (launch-bound): opt in with "triton"
            return False
        self._check_triton_device(p)
        return eligible

    def _state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state = self.state[p]
        dtype = _state_dtype(p)
        if len(state) == 0:
            state["step"] = 0
            if p.ndim >= 2:
                state["exp_avg_sq_row"] = p.new_zeros(p.shape[:-1], dtype=dtype)
                state["exp_avg_sq_col"] = p.new_zeros(p.shape[:-2] + p.shape[-1:], dtype=dtype)
            else:
                state["exp_avg_sq"] = p.new_zeros(p.shape, dtype=dtype)
            if p.dtype == torch.bfloat16:
                state["sr_seed"] = int(torch.randint(0, 1 << 62, ()).item())
        if group["beta1"] is not None and "exp_avg" not in state:
            state["exp_avg"] = p.new_zeros(p.shape, dtype=dtype)
        for key in _STATE_TENSORS:  # e.g. cast to a bf16 parameter's dtype by a generic loader
            if key in state and state[key].dtype != dtype:
                state[key] = state[key].to(dtype)
        return state

    @staticmethod
    def _step_size(group: dict[str, Any], t: int) -> float:
        """rho_t: the step size before the parameter scale."""
        if group["relative_step"]:
            cap = 1e-6 * t if group["warmup_init"] else group["max_relative_step"]
            return group["lr"] * min(cap, 1.0 / math.sqrt(t))
        return group["lr"]

    def update(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        if p.numel() == 0:
            return
        grad = p.grad
        if grad.is_sparse:
            raise ValueError("Adafactor does not support sparse gradients")
        if p.is_complex():
            raise ValueError("Adafactor does not support complex parameters")
        state = self._state(p, group)
        state["step"] += 1
        t = state["step"]
        dtype = _state_dtype(p)
        eps1, eps2 = group["eps"]
        if eps1 is None:
            eps1 = torch.finfo(p.dtype).eps
        clamp = group["eps_mode"] == "clamp"
        eps_sq = eps1 * eps1 if clamp else 0.0
        one_minus_beta2 = t ** group["decay_rate"]
        beta2 = 1.0 - one_minus_beta2
        if not clamp:
            one_minus_beta2 = 1.0 - beta2  # as HF computes it
        rho = self._step_size(group, t)
        use_triton = self._use_triton(p, group)
        work = p if use_triton else p.to(dtype)  # fp32 copy of a low-precision parameter
        param_scale = _rms(work).clamp_(min=eps2) if group["scale_parameter"] else None
        alpha: torch.Tensor | float = param_scale * rho if param_scale is not None else rho
        wd = group["weight_decay"]
        decay_scaled = group["weight_decay_mode"] == "step_size"

        if p.ndim >= 2:
            row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
            if use_triton:  # reduce without materialising a full-size fp32 square
                row_mean = torch.linalg.vector_norm(grad, dim=-1, dtype=torch.float32)
                row_mean = row_mean.square_().div_(grad.shape[-1])
                col_mean = torch.linalg.vector_norm(grad, dim=-2, dtype=torch.float32)
                col_mean = col_mean.square_().div_(grad.shape[-2])
                if not clamp:
                    row_mean.add_(eps1)
                    col_mean.add_(eps1)
            else:
                sq = grad.to(dtype).square()
                if not clamp:
                    sq.add_(eps1)
                row_mean, col_mean = sq.mean(dim=-1), sq.mean(dim=-2)
                del sq
            if clamp:
                row.lerp_(row_mean, one_minus_beta2)
                col.lerp_(col_mean, one_minus_beta2)
            else:
                row.mul_(beta2).add_(row_mean, alpha=one_minus_beta2)
                col.mul_(beta2).add_(col_mean, alpha=one_minus_beta2)
            denom = row.mean(dim=-1, keepdim=True)
            if clamp:
                denom.clamp_(min=eps1)
            row_factor = row / denom
            if use_triton:
                if param_scale is None:
                    param_scale = torch.ones((), dtype=torch.float32, device=p.device)
                triton_adafactor.factored_update_(
                    p,
                    grad.contiguous(),
                    row_factor,
                    col,
                    state.get("exp_avg") if group["beta1"] is not None else None,
                    param_scale=param_scale,
                    step_size=rho,
                    eps_sq=eps_sq,
                    clip_threshold=group["clip_threshold"],
                    beta1=group["beta1"],
                    weight_decay=wd if decay_scaled else wd * group["lr"],
                    decay_scaled=decay_scaled,
                    stochastic_rounding=group["stochastic_rounding"],
                    seed=_step_seed(state["sr_seed"], t) if "sr_seed" in state else 0,
                )
                return
            variance = row_factor.unsqueeze(-1) * col.unsqueeze(-2)
        else:
            exp_avg_sq = state["exp_avg_sq"]
            sq = grad.to(dtype).square()
            if clamp:
                exp_avg_sq.lerp_(sq, one_minus_beta2)
            else:
                exp_avg_sq.mul_(beta2).add_(sq.add_(eps1), alpha=one_minus_beta2)
            del sq
            variance = exp_avg_sq.clone()
        if clamp:
            variance.clamp_(min=eps_sq)
        update = variance.rsqrt_().mul_(grad)
        del variance

        update.div_((_rms(update) / group["clip_threshold"]).clamp_(min=1.0))
        update.mul_(alpha)
        if group["beta1"] is not None:
            exp_avg = state["exp_avg"]
            exp_avg.mul_(group["beta1"]).add_(update, alpha=1.0 - group["beta1"])
            update = exp_avg
        if wd != 0:
            work.mul_(1.0 - wd * (alpha if decay_scaled else group["lr"]))
        work.sub_(update)
        if work is not p:
            if p.dtype == torch.bfloat16 and group["stochastic_rounding"]:
                generator = torch.Generator(device=p.device)
                generator.manual_seed(_step_seed(state["sr_seed"], t))
                round_to_bf16_(p, work, generator)
            else:
                p.copy_(work)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's loader, but keeping fp32 state for low-precision parameters."""
        super().load_state_dict(state_dict)
        restore_saved_dtypes(self, state_dict)
