"""Parallel training strategies: how the one `Trainer` loop spreads a model over processes.

`trainer_args.parallelism` picks one: `ddp` (every rank holds the whole model; gradients are
all-reduced), `fsdp` (FSDP2: parameters, gradients and optimizer state sharded over the ranks),
`pipeline` (the layers split into stages over the ranks, run by a pipeline schedule) or `diloco`
(workers train alone and average their progress every H steps).
A strategy prepares the model before the optimizer is built, wraps it for training, and says how to
skip gradient synchronisation, clip gradients and gather the full weights; the loop, callbacks,
logging, control and checkpoints stay the same for every strategy.
"""

from __future__ import annotations

from typing import Any

import torch

from forgather.ml.train.parallel.base import Strategy
from forgather.ml.train.parallel.ddp import DDPStrategy
from forgather.ml.train.parallel.diloco import DiLoCoStrategy
from forgather.ml.train.parallel.fsdp import FSDPStrategy
from forgather.ml.train.parallel.pipeline import SCHEDULES, PipelineStrategy

STRATEGIES: dict[str, type[Strategy]] = {
    "ddp": DDPStrategy,
    "fsdp": FSDPStrategy,
    "pipeline": PipelineStrategy,
    "diloco": DiLoCoStrategy,
}


def make_strategy(args: Any, env: Any, device: torch.device) -> Strategy:
    """The strategy `args.parallelism` names (checked by `TrainingArguments`)."""
    return STRATEGIES[args.parallelism](args, env, device)


__all__ = [
    "STRATEGIES",
    "DDPStrategy",
    "DiLoCoStrategy",
    "FSDPStrategy",
    "PipelineStrategy",
    "SCHEDULES",
    "Strategy",
    "make_strategy",
]
