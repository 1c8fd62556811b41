"""Test helper: several optimizers stepped one after another, with no sharing between them."""

from __future__ import annotations


class StepEach:
    """Steps and zeroes each of `optimizers` in turn (the plain reference a wrapper must equal)."""

    def __init__(self, optimizers):
        self.optimizers = list(optimizers)

    def zero_grad(self):
        for optimizer in self.optimizers:
            optimizer.zero_grad()

    def step(self):
        for optimizer in self.optimizers:
            optimizer.step()
