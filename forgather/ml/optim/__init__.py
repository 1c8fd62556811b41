"""Optimizers and learning-rate schedules."""

from forgather.ml.optim.adafactor import Adafactor
from forgather.ml.optim.apollo import Apollo, apollo_mini
from forgather.ml.optim.factory import (
    OPTIMIZERS,
    is_embedding,
    is_hidden_matrix,
    is_no_decay,
    make_optimizer,
    weight_decay_groups,
)
from forgather.ml.optim.multiopt import Multiopt, multiopt
from forgather.ml.optim.muon import Muon
from forgather.ml.optim.projectors import OnlinePCAProjector, RandProjector
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
from forgather.ml.optim.sinkgd import SinkGD

__all__ = [
    "OPTIMIZERS",
    "Adafactor",
    "Apollo",
    "ConstantSchedule",
    "CosineSchedule",
    "InfiniteSchedule",
    "LinearSchedule",
    "Multiopt",
    "Muon",
    "OnlinePCAProjector",
    "RandProjector",
    "SinkGD",
    "WarmupStableDecaySchedule",
    "apollo_mini",
    "get_lr_scheduler",
    "is_embedding",
    "is_hidden_matrix",
    "is_no_decay",
    "make_optimizer",
    "make_schedule",
    "multiopt",
    "sequential_lr_factory",
    "weight_decay_groups",
]
