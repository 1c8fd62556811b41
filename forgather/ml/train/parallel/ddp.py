"""`parallelism: ddp`: DistributedDataParallel; every rank holds the whole model."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from forgather.ml.train.parallel.base import Strategy


class DDPStrategy(Strategy):
    """Replicas on every rank, gradients all-reduced in the backward of the last micro-batch.

    In one process the model is used as it is.
    """

    name = "ddp"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._ddp: torch.nn.parallel.DistributedDataParallel | None = None

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if not self.env.is_distributed:
            return model
        self._ddp = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=self.args.ddp_find_unused_parameters,
        )
        return self._ddp

    def no_sync(self) -> AbstractContextManager:
        return self._ddp.no_sync() if self._ddp is not None else nullcontext()
