"""APOLLO and APOLLO-Mini: AdamW-level training with SGD-like optimizer memory.

APOLLO (Zhu et al., 2024, "APOLLO: SGD-like Memory, AdamW-level Performance", arXiv:2412.05270)
observes that AdamW's element-wise learning-rate scaling can be coarsened to one factor per
channel (or per tensor), and estimates those factors from AdamW moments kept on a low-rank random
sketch of the gradient. For a projected 2-D parameter W (m x n) with gradient G, step t:

    R   = P G              (rank-r sketch along the smaller dimension, `projectors.Projector`)
    M   = b1 M + (1 - b1) R,     V = b2 V + (1 - b2) R^2          (moments of the sketch only)
    R~  = (M / (1 - b1^t)) / (sqrt(V / (1 - b2^t)) + eps)
    s_j = ||R~[:, j]|| / (||R[:, j]|| + 1e-8)   per channel j (the un-projected dimension), or
    s   = ||R~|| / (||R|| + 1e-8)               one factor ("tensor", APOLLO-Mini)
    U   = G diag(s)                                               (full-rank, in G's space)
    if ||U|| > gamma ||U_prev||: U = U * gamma ||U_prev|| / ||U||  (norm-growth limiter, Fira)
    W   = W (1 - lr wd) - lr * scale * U                          (decoupled weight decay)

The moments are kept across projection refreshes (as in the reference code). `||U_prev||` is the
previous step's update norm after limiting; the first step (and any step after an all-zero update)
is not limited. Parameters that are not projected get plain AdamW (`adamw_step`).

Options (every one settable per param group; every group records all of them):

- lr, betas, eps, weight_decay: as AdamW (eps default 1e-6, the reference code's).
- rank (128): sketch rank r. A 2-D parameter of a projected group whose smaller dimension is
  below `rank` is a ValueError: put it in a group with `projector=None`.
- projector ("random"): "random" (`RandProjector`, the paper's), "online_pca"
  (`OnlinePCAProjector`), a callable `(rank=, update_interval=, seed=) -> Projector`, or None: the
  whole group gets plain AdamW.
- scale_type ("channel"): "channel" (APOLLO) or "tensor" (APOLLO-Mini).
- scale (1.0): the multiplier `scale` above. The reference code's `--apollo_scale` is its square:
  APOLLO-Mini's 128 there is `scale=sqrt(128)` here (`apollo_mini`'s default).
- update_interval (200): steps between projection refreshes.
- seed (0): the random projections' seed (with the refresh index and the parameter's shape).
- norm_growth_limit (1.01): gamma; None turns the limiter off.

Default rule: in a group whose `projector` is not None, parameters with ndim == 2 are projected
(so embeddings and heads too, unless grouped with `projector=None`); 1-D and >2-D parameters get
AdamW. `apollo_mini(params)` is APOLLO-Mini: rank 1, tensor-wise scaling, scale sqrt(128).

Memory per projected m x n parameter: 2 * r * max(m, n) moments (AdamW: 2 * m * n) plus two
scalars; `online_pca` adds its r x min(m, n) basis to the state. A random projection is not
saved (it is redrawn from the seed on resume), but the current one is cached in memory (r x min(m,
n)). Steady-state temporaries are one full-size update. APOLLO-Mini: 2 * max(m, n) + min(m, n).

State (per parameter, all tensors): step, exp_avg, exp_avg_sq, update_norm and, for online_pca,
proj_matrix; moments are kept in the parameter's dtype (as torch's AdamW does) and computed in
float32 for half-precision parameters. So `state_dict()`/`load_state_dict()` (and torch's
distributed-checkpoint helpers) resume bit-exactly.

Deviations from the reference implementation (github.com/zhuhanqing/APOLLO), all following the
paper's Algorithm 1: bias correction is applied to the moments before the ratio (the reference
folds it into the step size, so its limiter sees uncorrected norms); weight decay is applied before
the update, like torch's AdamW (the reference decays the already-updated weight); the random
projection's seed is a group setting mixed with the parameter's shape instead of the parameter's
position, so an optimizer rebuilt for one parameter (`type(opt)([{**group, "params": [p]}])`)
takes the same steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from forgather.ml.optim.base import ParameterwiseOptimizer
from forgather.ml.optim.dtensor import shard_like, whole
from forgather.ml.optim.projectors import OnlinePCAProjector, Projector, RandProjector

_RATIO_EPS = 1e-8  # the reference's guard in ||R~|| / (||R|| + eps)
_PROJECTORS = ("random", "online_pca")
_SCALE_TYPES = ("channel", "tensor")


def _compute_dtype(tensor: Tensor) -> torch.dtype:
    return tensor.dtype if tensor.dtype in (torch.float32, torch.float64) else torch.float32


def _new_step() -> Tensor:
    return torch.tensor(0.0, dtype=torch.float32)  # kept on the CPU, like torch's AdamW


def check_adamw_settings(group: dict[str, Any]) -> None:
    """ValueError (naming the option) for bad lr / betas / eps / weight_decay of a param group."""
    lr = group["lr"]
    if not isinstance(lr, Tensor) and not lr >= 0.0:
        raise ValueError(f"lr must be >= 0, got {lr!r}")
    betas = group["betas"]
    if len(betas) != 2 or not all(0.0 <= float(beta) < 1.0 for beta in betas):
        raise ValueError(f"betas must be two values in [0, 1), got {betas!r}")
    group["betas"] = (float(betas[0]), float(betas[1]))
    if not group["eps"] >= 0.0:
        raise ValueError(f"eps must be >= 0, got {group['eps']!r}")
    if not group["weight_decay"] >= 0.0:
        raise ValueError(f"weight_decay must be >= 0, got {group['weight_decay']!r}")


def adamw_step(param: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One AdamW step of `param` from its `.grad` (torch's formula; state in the param's dtype)."""
    grad = param.grad
    assert grad is not None
    if not state:
        state["step"] = _new_step()
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    beta1, beta2 = group["betas"]
    lr = float(group["lr"])
    state["step"] += 1
    step = int(state["step"].item())
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    exp_avg.lerp_(grad, 1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(group["eps"])
    if group["weight_decay"] != 0.0:
        param.mul_(1.0 - lr * group["weight_decay"])
    param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Apollo(ParameterwiseOptimizer):
    """APOLLO / APOLLO-Mini (see the module docs for the algorithm, options and default rule)."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        rank: int = 128,
        projector: str | Callable[..., Projector] | None = "random",
        scale_type: str = "channel",
        scale: float = 1.0,
        update_interval: int = 200,
        seed: int = 0,
        norm_growth_limit: float | None = 1.01,
    ):
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "rank": rank,
            "projector": projector,
            "scale_type": scale_type,
            "scale": scale,
            "update_interval": update_interval,
            "seed": seed,
            "norm_growth_limit": norm_growth_limit,
        }
        self._projectors: dict[Tensor, tuple[tuple, Projector]] = {}
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_projectors", {})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_adamw_settings(group)
        projector = group["projector"]
        if projector is not None and projector not in _PROJECTORS and not callable(projector):
            raise ValueError(f"projector must be one of {_PROJECTORS}, a callable or None")
        if not _is_int(group["rank"]) or group["rank"] < 1:
            raise ValueError(f"rank must be a positive integer, got {group['rank']!r}")
        if group["scale_type"] not in _SCALE_TYPES:
            raise ValueError(
                f"scale_type must be one of {_SCALE_TYPES}, got {group['scale_type']!r}"
            )
        if not group["scale"] > 0.0:
            raise ValueError(f"scale must be > 0, got {group['scale']!r}")
        if not _is_int(group["update_interval"]) or group["update_interval"] < 1:
            raise ValueError(
                f"update_interval must be a positive integer, got {group['update_interval']!r}"
            )
        if not _is_int(group["seed"]):
            raise ValueError(f"seed must be an integer, got {group['seed']!r}")
        limit = group["norm_growth_limit"]
        if limit is not None and not limit >= 1.0:
            raise ValueError(f"norm_growth_limit must be >= 1 or None, got {limit!r}")
        for param in group["params"]:
            if self._projected(group, param) and group["rank"] > min(param.shape):
                raise ValueError(
                    f"rank={group['rank']} exceeds the smaller dimension of a parameter of shape "
                    f"{tuple(param.shape)} (give it a group with projector=None, or a lower rank)"
                )

    @staticmethod
    def _projected(group: dict[str, Any], param: Tensor) -> bool:
        return group["projector"] is not None and param.ndim == 2

    def update(self, param: Tensor, group: dict[str, Any]) -> None:
        if self._projected(group, param):
            self._apollo_step(param, self.state[param], group)
        else:
            adamw_step(param, self.state[param], group)

    def _projector(self, param: Tensor, state: dict[str, Any], group: dict[str, Any]) -> Projector:
        """The parameter's projector, rebuilt from its state when the cached one is not current."""
        key = (group["projector"], group["rank"], group["update_interval"], group["seed"])
        step = int(state["step"].item())
        cached = self._projectors.get(param)
        if cached is not None:
            cached_key, projector = cached
            current = cached_key == key and projector.steps == step
            if current and all(
                state.get(f"proj_{name}") is value
                for name, value in projector.state_dict().items()
                if isinstance(value, Tensor)
            ):
                return projector
        kind = group["projector"]
        if kind == "random":
            projector = RandProjector(group["rank"], group["update_interval"], group["seed"])
        elif kind == "online_pca":
            projector = OnlinePCAProjector(group["rank"], group["update_interval"])
        else:
            projector = kind(
                rank=group["rank"], update_interval=group["update_interval"], seed=group["seed"]
            )
        saved = {name[5:]: value for name, value in state.items() if name.startswith("proj_")}
        projector.load_state_dict({**projector.state_dict(), **saved, "steps": step})
        self._projectors[param] = (key, projector)
        return projector

    def _apollo_step(self, param: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        assert param.grad is not None
        grad = whole(param.grad)  # FSDP2: the projection needs the whole matrix
        grad = grad.to(_compute_dtype(grad))
        if not state:
            state["step"] = _new_step()
        projector = self._projector(param, state, group)
        low = projector.project(grad)
        saved = projector.state_dict()
        for name, value in saved.items():  # tensor state (online_pca's basis) lives in self.state
            if isinstance(value, Tensor):
                if value.is_floating_point() and value.dtype != param.dtype:
                    value = value.to(param.dtype)  # what load_state_dict would make of it
                    projector.load_state_dict({**saved, name: value})
                state[f"proj_{name}"] = value
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(low, dtype=param.dtype)
            state["exp_avg_sq"] = torch.zeros_like(low, dtype=param.dtype)
            state["update_norm"] = torch.zeros((), dtype=param.dtype, device=param.device)

        beta1, beta2 = group["betas"]
        lr = float(group["lr"])
        state["step"] += 1
        step = int(state["step"].item())
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        low_state = low.to(exp_avg.dtype)
        exp_avg.lerp_(low_state, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(low_state, low_state, value=1.0 - beta2)

        m_hat = exp_avg.to(low.dtype) / (1.0 - beta1**step)
        v_hat = exp_avg_sq.to(low.dtype) / (1.0 - beta2**step)
        scaled = m_hat / (v_hat.sqrt_() + group["eps"])
        if group["scale_type"] == "channel":
            dim = 0 if Projector.is_left(grad.shape) else 1  # norms across the rank dimension
            factor = scaled.norm(dim=dim, keepdim=True) / (
                low.norm(dim=dim, keepdim=True) + _RATIO_EPS
            )
        else:
            factor = scaled.norm() / (low.norm() + _RATIO_EPS)
        update = grad * factor

        norm = update.norm()
        limit = group["norm_growth_limit"]
        if limit is not None:
            previous = state["update_norm"].to(norm.dtype)
            cap = previous * limit
            clip = (previous > 0) & (norm > cap)
            ratio = torch.where(clip, cap / norm, torch.ones_like(norm))
            update.mul_(ratio)
            norm = torch.where(clip, cap, norm)
        state["update_norm"].copy_(norm)

        if group["weight_decay"] != 0.0:
            param.mul_(1.0 - lr * group["weight_decay"])
        param.add_(shard_like(update.to(param.dtype), param), alpha=-lr * group["scale"])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._projectors.clear()


def apollo_mini(
    params: Iterable[Tensor] | Iterable[dict[str, Any]],
    lr: float = 1e-3,
    *,
    rank: int = 1,
    scale: float = math.sqrt(128.0),
    scale_type: str = "tensor",
    **kwargs: Any,
) -> Apollo:
    """APOLLO-Mini: `Apollo` with a rank-1 sketch, one tensor-wise factor and scale sqrt(128)."""
    return Apollo(params, lr, rank=rank, scale=scale, scale_type=scale_type, **kwargs)


__all__ = ["Apollo", "adamw_step", "apollo_mini", "check_adamw_settings"]
