"""What every parallel strategy provides to the `Trainer` loop."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch


class Strategy:
    """A way to train one model on the ranks of `env`; the defaults are those of one process.

    The trainer calls, in order: `prepare(model)` before it builds the optimizer (a strategy that
    shards parameters does it here), `wrap(model)` after (the module the training forward runs
    through), then per step `no_sync()` around every micro-batch but the last and
    `clip_gradients()` before the optimizer step.
    """

    name = "single"
    #: Whether each rank holds only a shard of the weights (then `full_state_dict` gathers them).
    sharded = False

    def __init__(self, args: Any, env: Any, device: torch.device):
        self.args = args
        self.env = env
        self.device = device

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def no_sync(self) -> AbstractContextManager:
        return nullcontext()

    def clip_gradients(self, model: torch.nn.Module, max_norm: float | None) -> torch.Tensor:
        """Clip to `max_norm` (only measure when None); returns the total norm before clipping."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if max_norm is None:
            return torch.nn.utils.get_total_norm(grads)
        return torch.nn.utils.clip_grad_norm_(
            [p for p in model.parameters() if p.grad is not None], max_norm
        )

    def full_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """The whole model's weights on rank 0 (None elsewhere); every rank must call it."""
        return model.state_dict() if self.env.is_main_process else None

    def describe(self) -> str:
        return self.name
