"""Several optimizers stepping one model as one optimizer: parameter groups chosen by regex.

    optimizer_factory: !partial:forgather.ml.optim:multiopt
      groups:
        - pattern: "embed|lm_head|norm|bias"
          optimizer: !partial:torch.optim:AdamW {lr: 3.0e-4, weight_decay: 0.0}
        - pattern: "."
          optimizer: !partial:forgather.ml.optim:Muon {lr: 3.0e-4}

Each parameter goes to the first group whose `pattern` is found in its name (`re.search`); a
parameter no pattern matches is an error that names it. Each group's `optimizer` is called with its
parameters (a list of tensors, or of `(name, tensor)` pairs when its first argument is named
`named_parameters`, like the trainer's own optimizer factory).

`Multiopt` is one `torch.optim.Optimizer` to everything else: its `param_groups` are the inner
optimizers' own group dicts, in order (an LR scheduler scales each one's `lr`, so every group keeps
its own base learning rate); the inner optimizers share one `state`, so `state_dict()` /
`load_state_dict()` and torch's distributed-checkpoint helpers see one optimizer, and resume is
exact. `zero_grad` and `step` go to every inner optimizer.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from forgather.ml.optim.base import run_closure
from forgather.ml.optim.state import restore_saved_dtypes
from forgather.ml.signatures import first_parameter_name


class Multiopt(torch.optim.Optimizer):
    """`optimizers` (over disjoint parameters) stepped, scheduled and checkpointed as one."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]):
        if not optimizers:
            raise ValueError("Multiopt needs at least one optimizer")
        optimizers = [  # a Multiopt inside is flattened: one level shares groups and state
            leaf
            for optimizer in optimizers
            for leaf in (optimizer.optimizers if isinstance(optimizer, Multiopt) else [optimizer])
        ]
        seen: set[int] = set()
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                for param in group["params"]:
                    if id(param) in seen:
                        raise ValueError("Multiopt: a parameter is in two of its optimizers")
                    seen.add(id(param))
        self.optimizers = list(optimizers)
        groups = [group for optimizer in self.optimizers for group in optimizer.param_groups]
        torch.optim.Optimizer.__init__(self, [{"params": g["params"]} for g in groups], {})
        self._share(groups, defaultdict(dict))
        for optimizer in self.optimizers:  # state an inner optimizer made at construction
            self.state.update(optimizer.state)
        for optimizer in self.optimizers:
            optimizer.state = self.state

    def _share(self, groups: list[dict[str, Any]], state: defaultdict) -> None:
        """Make the inner optimizers use `groups` (in order) and `state` as their own."""
        self.param_groups = groups
        self.state = state
        start = 0
        for optimizer in self.optimizers:
            count = len(optimizer.param_groups)
            optimizer.param_groups = groups[start : start + count]
            optimizer.state = state
            start += count

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = run_closure(closure)
        for optimizer in self.optimizers:
            optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # new group dicts and a new state: share them again
        self._share(self.param_groups, self.state)
        restore_saved_dtypes(self, state_dict)  # fp32 state of bf16 parameters stays fp32


def split_by_pattern(
    named_parameters: Iterable[tuple[str, nn.Parameter]], patterns: Sequence[str]
) -> list[list[tuple[str, nn.Parameter]]]:
    """The trainable parameters split by the first of `patterns` found in each name."""
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as error:
            raise ValueError(f"multiopt: pattern {pattern!r} is not a regex: {error}") from None
    split: list[list[tuple[str, nn.Parameter]]] = [[] for _ in patterns]
    unmatched = []
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        index = next((i for i, regex in enumerate(compiled) if regex.search(name)), None)
        if index is None:
            unmatched.append(name)
        else:
            split[index].append((name, param))
    if unmatched:
        shown = ", ".join(unmatched[:5]) + (" …" if len(unmatched) > 5 else "")
        raise ValueError(
            f"multiopt: no group's pattern matches {len(unmatched)} parameter(s): {shown} "
            f"(patterns: {list(patterns)}; end with pattern '.' to catch the rest)"
        )
    return split


def multiopt(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    groups: Sequence[Mapping[str, Any]],
) -> Multiopt:
    """A `Multiopt` of one optimizer per group `{pattern: REGEX, optimizer: FACTORY}` (first match
    wins; groups no parameter matched are left out)."""
    for index, group in enumerate(groups):
        missing = {"pattern", "optimizer"} - set(group)
        if missing:
            raise ValueError(f"multiopt: groups[{index}] lacks {sorted(missing)}")
    split = split_by_pattern(named_parameters, [group["pattern"] for group in groups])
    optimizers = [
        _build(group["optimizer"], members)
        for group, members in zip(groups, split, strict=True)
        if members
    ]
    return Multiopt(optimizers)


def _build(factory: Callable, members: list[tuple[str, nn.Parameter]]) -> torch.optim.Optimizer:
    if first_parameter_name(factory) == "named_parameters":
        return factory(members)
    return factory([param for _, param in members])


__all__ = ["Multiopt", "multiopt", "split_by_pattern"]
