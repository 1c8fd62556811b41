"""Learning-rate schedules as multipliers of the peak LR, driven by `torch.optim.lr_scheduler.LambdaLR`.

Each schedule is a small callable object `schedule(step) -> float`. `LambdaLR` saves the `__dict__` of
callable objects in its `state_dict`, so a scheduler built from them checkpoints and resumes exactly.
`get_lr_scheduler(name, optimizer, num_warmup_steps, num_training_steps, **kwargs)` builds one by name;
`sequential_lr_factory` chains scheduler factories at step milestones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, SequentialLR


def _warmup(step: int, warmup_steps: int) -> float:
    """Linear ramp: (step + 1) / warmup_steps during warmup (so step 0 trains), then 1."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 1.0


def _decay(progress: float, shape: str) -> float:
    """Fraction of the way from 1 down to 0 at `progress` in [0, 1], for a decay `shape`."""
    progress = min(max(progress, 0.0), 1.0)
    if shape == "linear":
        return 1.0 - progress
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if shape == "sqrt":
        return 1.0 - math.sqrt(progress)
    raise ValueError(f"unknown decay shape {shape!r} (linear, cosine, sqrt)")


@dataclass
class ConstantSchedule:
    """Warmup, then the peak LR for ever."""

    warmup_steps: int = 0

    def __call__(self, step: int) -> float:
        return _warmup(step, self.warmup_steps)


@dataclass
class _WarmupDecaySchedule:
    """Warmup, then decay of shape `shape` from the peak to `min_lr_ratio` × peak at `training_steps`."""

    shape: ClassVar[str]
    warmup_steps: int
    training_steps: int
    min_lr_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return _warmup(step, self.warmup_steps)
        progress = (step - self.warmup_steps) / max(1, self.training_steps - self.warmup_steps)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * _decay(progress, self.shape)


@dataclass
class LinearSchedule(_WarmupDecaySchedule):
    """Warmup, then linear decay from the peak to `min_lr_ratio` × peak at `training_steps`."""

    shape: ClassVar[str] = "linear"


@dataclass
class CosineSchedule(_WarmupDecaySchedule):
    """Warmup, then half a cosine from the peak to `min_lr_ratio` × peak at `training_steps`."""

    shape: ClassVar[str] = "cosine"


@dataclass
class WarmupStableDecaySchedule:
    """Warmup, the peak LR, then decay to `min_lr_ratio` over the last `decay_ratio` of the steps.

    `decay_shape` is "linear", "cosine" or "sqrt" (1 - sqrt(progress)). `decay_steps`, when given,
    replaces `decay_ratio` × `training_steps`.
    """

    warmup_steps: int
    training_steps: int
    decay_ratio: float = 0.1
    min_lr_ratio: float = 0.0
    decay_shape: str = "linear"
    decay_steps: int | None = None

    def __post_init__(self) -> None:
        _decay(0.0, self.decay_shape)  # reject an unknown shape now
        if not 0.0 <= self.decay_ratio <= 1.0:
            raise ValueError(f"decay_ratio must be in [0, 1], got {self.decay_ratio}")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return _warmup(step, self.warmup_steps)
        decay_steps = self.decay_steps
        if decay_steps is None:
            decay_steps = round(self.decay_ratio * self.training_steps)
        decay_start = max(self.warmup_steps, self.training_steps - decay_steps)
        if step < decay_start:
            return 1.0
        progress = (step - decay_start) / max(1, self.training_steps - decay_start)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * _decay(progress, self.decay_shape)


@dataclass
class InfiniteSchedule:
    """The "infinite" schedule: needs no total length, so training can go on and be annealed later.

    Linear warmup to the peak over `warmup_steps`; cosine cooldown from the peak to `constant_lr_ratio`
    over `cooldown_steps`; that constant LR for as long as training runs; and, when `annealing_start` is
    set, from that step an exponential anneal from `constant_lr_ratio` to `min_lr_ratio` over
    `annealing_steps`, then `min_lr_ratio`.
    """

    warmup_steps: int = 0
    cooldown_steps: int = 0
    constant_lr_ratio: float = 0.1
    annealing_start: int | None = None
    annealing_steps: int = 1000
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.annealing_start is not None and self.min_lr_ratio <= 0:
            # An exponential reaches 0 never: anneal to a tiny positive ratio instead.
            self.min_lr_ratio = 1e-3 * self.constant_lr_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return _warmup(step, self.warmup_steps)
        if self.annealing_start is not None and step >= self.annealing_start:
            progress = min(1.0, (step - self.annealing_start) / max(1, self.annealing_steps))
            return self.constant_lr_ratio * (self.min_lr_ratio / self.constant_lr_ratio) ** progress
        cooldown_step = step - self.warmup_steps
        if cooldown_step < self.cooldown_steps:
            progress = cooldown_step / self.cooldown_steps
            return self.constant_lr_ratio + (1.0 - self.constant_lr_ratio) * _decay(
                progress, "cosine"
            )
        return self.constant_lr_ratio


def make_schedule(name: str, num_warmup_steps: int, num_training_steps: int, **kwargs):
    """The multiplier callable of schedule `name` ("linear", "cosine", "constant", "wsd", "infinite")."""
    if name == "linear":
        return LinearSchedule(num_warmup_steps, num_training_steps, **kwargs)
    if name == "cosine":
        return CosineSchedule(num_warmup_steps, num_training_steps, **kwargs)
    if name == "constant":
        return ConstantSchedule(num_warmup_steps, **kwargs)
    if name == "wsd":
        return WarmupStableDecaySchedule(num_warmup_steps, num_training_steps, **kwargs)
    if name == "infinite":
        return InfiniteSchedule(num_warmup_steps, **kwargs)
    raise ValueError(f"unknown lr schedule {name!r} (linear, cosine, constant, wsd, infinite)")


def get_lr_scheduler(
    name: str,
    optimizer: Optimizer,
    num_warmup_steps: int = 0,
    num_training_steps: int = 0,
    **kwargs,
) -> LambdaLR:
    """A `LambdaLR` following schedule `name`; extra kwargs go to the schedule class.

    As an `lr_scheduler_factory` in a config:
    `!partial:forgather.ml.optim:get_lr_scheduler {name: cosine, num_warmup_steps: 100}`
    (the trainer adds `optimizer=` and `num_training_steps=`).
    """
    return LambdaLR(optimizer, make_schedule(name, num_warmup_steps, num_training_steps, **kwargs))


def sequential_lr_factory(
    optimizer: Optimizer,
    schedulers: Sequence[Callable[..., Any]],
    milestones: Sequence[int],
    num_training_steps: int | None = None,
) -> SequentialLR:
    """Schedulers one after another (torch's `SequentialLR`): scheduler `i` runs from milestone
    `i - 1` to milestone `i` (steps counted from the start), the last one to the end.

    `schedulers` are factories, as `lr_scheduler_factory` is: each is called with `optimizer=`, and
    with `num_training_steps=` its own segment's length when it takes that (forgather's
    `get_lr_scheduler` partials do; torch scheduler partials need none). In a config:

        lr_scheduler_factory: !partial:forgather.ml.optim:sequential_lr_factory
            schedulers:
                - !partial:torch.optim.lr_scheduler:LinearLR { start_factor: 0.1, total_iters: 100 }
                - !partial:torch.optim.lr_scheduler:CosineAnnealingLR { T_max: 900 }
            milestones: [ 100 ]
    """
    from forgather.ml.signatures import accepts_keyword

    milestones = [int(m) for m in milestones]
    if len(milestones) != len(schedulers) - 1:
        raise ValueError(
            f"sequential_lr_factory: {len(schedulers)} schedulers need {len(schedulers) - 1} "
            f"milestones, got {len(milestones)}"
        )
    if any(b <= a for a, b in zip([0, *milestones], milestones, strict=False)):
        raise ValueError(
            f"sequential_lr_factory: milestones must be positive and increasing, got {milestones}"
        )
    ends = [*milestones, num_training_steps]
    built = []
    for index, factory in enumerate(schedulers):
        start = milestones[index - 1] if index else 0
        kwargs: dict[str, Any] = {}
        if accepts_keyword(factory, "num_training_steps"):
            if ends[index] is None:
                raise ValueError(
                    "sequential_lr_factory: the last scheduler takes num_training_steps, but none "
                    "was given (the trainer gives it)"
                )
            kwargs["num_training_steps"] = ends[index] - start
        built.append(factory(optimizer=optimizer, **kwargs))
    return SequentialLR(optimizer, schedulers=built, milestones=milestones)


__all__ = [
    "ConstantSchedule",
    "CosineSchedule",
    "InfiniteSchedule",
    "LinearSchedule",
    "WarmupStableDecaySchedule",
    "get_lr_scheduler",
    "make_schedule",
    "sequential_lr_factory",
]
