"""What every forgather optimizer's `step` shares: the closure, and one update per parameter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def run_closure(closure: Callable[[], Any] | None) -> Any:
    """`closure()` with gradients enabled (an optimizer's `step` runs under no_grad), or None."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class ParameterwiseOptimizer(torch.optim.Optimizer):
    """An optimizer that updates each parameter with a gradient on its own: a subclass defines
    `update(param, group)`; sparse gradients are refused by name."""

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter that has a gradient; returns `closure()`'s loss."""
        loss = run_closure(closure)
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                self.update(param, group)
        return loss

    def update(self, param: torch.Tensor, group: dict[str, Any]) -> None:
        """Update `param` from its `.grad` with `group`'s settings."""
        raise NotImplementedError


__all__ = ["ParameterwiseOptimizer", "run_closure"]
