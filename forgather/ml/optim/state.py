"""Optimizer state loaded as it was saved.

torch's `Optimizer.load_state_dict` casts every floating-point state tensor to its parameter's
dtype. An optimizer that keeps fp32 state for bf16/fp16 parameters (Adafactor's moments, Muon's
momentum) would resume with that state rounded to bf16, so the resumed run drifts from the
straight one. `restore_saved_dtypes` copies those entries again in the dtype they were saved in;
our optimizers and optimizer wrappers (Multiopt, the step in backward) call it after torch's loader.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import torch

_LOW_PRECISION = (torch.bfloat16, torch.float16)


def restore_saved_dtypes(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> None:
    """Undo `load_state_dict`'s cast of the floating-point state of low-precision parameters:
    re-copy each such entry from `state_dict` in its saved dtype (on the parameter's device)."""
    saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
    params = chain.from_iterable(g["params"] for g in optimizer.param_groups)
    for saved_id, param in zip(saved_ids, params, strict=True):
        saved = state_dict["state"].get(saved_id)
        if saved is None or param.dtype not in _LOW_PRECISION:
            continue
        state = optimizer.state[param]
        for key, value in saved.items():
            if torch.is_tensor(value) and value.is_floating_point() and value.dtype != param.dtype:
                state[key] = value.to(device=param.device, copy=True)


__all__ = ["restore_saved_dtypes"]
