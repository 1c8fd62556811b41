"""Optimizers and learning-rate schedules."""

from forgather.ml.optim.factory import is_no_decay, make_optimizer, weight_decay_groups
from forgather.ml.optim.schedules import (
    ConstantSchedule,
    CosineSchedule,
    InfiniteSchedule,
    LinearSchedule,
    WarmupStableDecaySchedule,
    get_lr_scheduler,
    make_schedule,
    sequential_lr_factory,
)

__all__ = [
    "ConstantSchedule",
    "CosineSchedule",
    "InfiniteSchedule",
    "LinearSchedule",
    "WarmupStableDecaySchedule",
    "get_lr_scheduler",
    "is_no_decay",
    "make_optimizer",
    "make_schedule",
    "sequential_lr_factory",
    "weight_decay_groups",
]
