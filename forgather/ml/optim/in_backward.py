"""The optimizer step fused into the backward pass: each parameter is updated as soon as its
gradient is complete, and that gradient is freed at once.

`OptimizerInBackward(optimizer)` splits a built optimizer (each inner optimizer of a `Multiopt`) into
one optimizer of the same class and hyper-parameters per parameter, stepped by the parameter's post-accumulate-grad hook. So the
gradients of the whole model never exist together: peak memory drops by up to one gradient per
parameter (the largest gradients are freed before the backward pass reaches the embeddings).

It stays one `torch.optim.Optimizer` to everything else: its `param_groups` are the per-parameter
optimizers' own (an LR scheduler that sets a group's `lr` sets it for that parameter's optimizer),
they share one `state`, so `state_dict()` / `load_state_dict()` and torch's distributed-checkpoint
helpers see an ordinary optimizer with one group per parameter. `step()` steps whatever gradients
are still present (none in training; torch's checkpoint helpers use it to create lazy state).

What it cannot do, by construction: clip by the global gradient norm (no parameter waits for the
others), accumulate gradients over micro-batches, or work under data parallelism (the hook fires
before gradients are averaged across ranks). The trainer refuses those combinations. The global
gradient norm is still measured (each gradient's square sum is added up in its hook).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from forgather.ml.optim.base import run_closure
from forgather.ml.optim.multiopt import Multiopt
from forgather.ml.optim.state import restore_saved_dtypes


class OptimizerInBackward(torch.optim.Optimizer):
    """Per-parameter copies of `optimizer`, stepped in the backward pass (see the module docs)."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.inner = []
        groups: list[dict[str, Any]] = []
        state: defaultdict = defaultdict(dict)
        leaves = optimizer.optimizers if isinstance(optimizer, Multiopt) else [optimizer]
        for leaf in leaves:
            for group in leaf.param_groups:
                settings = {k: v for k, v in group.items() if k != "params"}
                for param in group["params"]:
                    # the group holds every hyper-parameter (defaults filled in): the whole spec
                    sub = type(leaf)([{**settings, "params": [param]}])
                    sub.state = state  # one state for all: keys are distinct parameters
                    groups.append(sub.param_groups[0])
                    self.inner.append(sub)
        torch.optim.Optimizer.__init__(self, [{"params": g["params"]} for g in groups], {})
        self.param_groups = groups  # the per-parameter optimizers' own dicts, shared
        self.state = state
        self._grad_square_sum: torch.Tensor | None = None
        self._hooks = [
            param.register_post_accumulate_grad_hook(self._hook(sub))
            for sub in self.inner
            for param in sub.param_groups[0]["params"]
        ]

    def _hook(self, sub: torch.optim.Optimizer):
        def step_now(param: torch.Tensor) -> None:
            square = param.grad.detach().float().pow(2).sum()
            self._grad_square_sum = (
                square if self._grad_square_sum is None else self._grad_square_sum + square
            )
            sub.step()
            sub.zero_grad(set_to_none=True)

        return step_now

    def take_grad_norm(self) -> torch.Tensor:
        """The norm of all gradients the hooks stepped since the last call (0 if none)."""
        total, self._grad_square_sum = self._grad_square_sum, None
        if total is None:
            return torch.zeros(())
        return total.sqrt()

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = run_closure(closure)  # its backward pass steps the parameters through their hooks
        for sub in self.inner:
            if any(p.grad is not None for p in sub.param_groups[0]["params"]):
                sub.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # new group dicts and a new state: share them again
        for sub, group in zip(self.inner, self.param_groups, strict=True):
            sub.param_groups[0] = group
            sub.state = self.state
        restore_saved_dtypes(self, state_dict)  # fp32 state of bf16 parameters stays fp32

    def zero_grad(self, set_to_none: bool = True) -> None:
        for sub in self.inner:
            sub.zero_grad(set_to_none=set_to_none)

    def remove_hooks(self) -> None:
        """Stop stepping in the backward pass (the parameters' hooks are removed)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
