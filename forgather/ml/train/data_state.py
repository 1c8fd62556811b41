"""Deterministic, resumable data order: which samples each rank sees, and where training is in it.

The training order of epoch `e` is a permutation of the dataset seeded by `seed + e` (the same on every
rank), sharded like `DistributedSampler`: rank `r` takes positions `r, r + W, r + 2W, ...`. Because it
depends only on (seed, epoch, world size), the position `DataPosition(epoch, batches_consumed)` is all a
checkpoint needs to restore the exact next batch. Evaluation batches are sequential and dealt out
round-robin to ranks, so the evaluated set does not depend on the world size.

A streaming training set (`forgather.ml.data.streaming`) has no such global order: each rank reads
its own part of the stream, so each rank saves its own position (the data loader's state,
`data_state_rank<r>.pt`) and the shared `data_state.pt` records the set-up that position is only
meaningful with (`stream_data_state_dict`, checked by `check_stream_data_state`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.data import Sampler


@dataclass
class DataPosition:
    """Where training is in the data: the epoch and the micro-batches of it each rank has consumed."""

    epoch: int = 0
    batches_consumed: int = 0

    def state_dict(self) -> dict[str, int]:
        return asdict(self)


class ResumableDistributedSampler(Sampler[int]):
    """Per-epoch seeded permutation, sharded by rank, that can start part-way into an epoch.

    `set_epoch(epoch, start=n)` makes the next iteration skip this rank's first `n` samples of the epoch.
    With `drop_last` the tail that does not divide evenly among ranks is dropped; otherwise the order is
    padded by repeating its start (as `DistributedSampler` does) so every rank has the same length.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = False,
    ):
        if num_samples < 1:
            raise ValueError("the training dataset is empty")
        self.dataset_size = num_samples
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        if drop_last:
            self.samples_per_rank = num_samples // world_size
        else:
            self.samples_per_rank = math.ceil(num_samples / world_size)
        if self.samples_per_rank == 0:
            raise ValueError(f"{num_samples} samples cannot be shared among {world_size} ranks")
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def epoch_indices(self, epoch: int) -> list[int]:
        """All of this rank's sample indices for `epoch`, from the beginning."""
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + epoch)
            order = torch.randperm(self.dataset_size, generator=generator).tolist()
        else:
            order = list(range(self.dataset_size))
        total = self.samples_per_rank * self.world_size
        if total > len(order):
            repeats = math.ceil((total - len(order)) / len(order))
            order = order + (order * repeats)[: total - len(order)]
        order = order[:total]
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices(self.epoch)[self.start :])

    def __len__(self) -> int:
        return self.samples_per_rank - self.start


def batches_per_epoch(
    sampler: ResumableDistributedSampler, batch_size: int, drop_last: bool
) -> int:
    """Micro-batches each rank gets in a full epoch."""
    n = sampler.samples_per_rank
    return n // batch_size if drop_last else math.ceil(n / batch_size)


class EvalBatchSampler(Sampler[list[int]]):
    """Sequential batches of the evaluation set, at most `max_batches` in total, dealt round-robin to ranks.

    `equal_counts`: every rank gets as many batches as the rank with the most (a sharded model's
    forward is a collective, so a rank that ran out would leave the others waiting); the extra
    batches repeat earlier ones, and only the first `real_batches` of a rank's batches count.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        max_batches: int = -1,
        equal_counts: bool = False,
    ):
        self.batches = [
            list(range(start, min(start + batch_size, num_samples)))
            for start in range(0, num_samples, batch_size)
        ]
        if max_batches > 0:
            self.batches = self.batches[:max_batches]
        self.mine = self.batches[rank::world_size]
        self.real_batches = len(self.mine)
        if equal_counts and self.batches:
            most = -(-len(self.batches) // world_size)
            self.mine += [self.batches[i % len(self.batches)] for i in range(most - len(self.mine))]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.mine)

    def __len__(self) -> int:
        return len(self.mine)


def data_state_dict(
    position: DataPosition, sampler: ResumableDistributedSampler, batch_size: int
) -> dict[str, Any]:
    """What `data_state.pt` holds: the position and what it is only meaningful with."""
    return {
        **position.state_dict(),
        "seed": sampler.seed,
        "world_size": sampler.world_size,
        "per_device_batch_size": batch_size,
        "dataset_size": sampler.dataset_size,
        "shuffle": sampler.shuffle,
        "drop_last": sampler.drop_last,
    }


def check_data_state(
    state: dict[str, Any], sampler: ResumableDistributedSampler, batch_size: int
) -> DataPosition:
    """The saved position for the current data set-up, or ValueError naming what differs.

    Another world size or per-device batch size is fine when the samples consumed so far fill
    whole micro-batches of the new set-up: rank r of W takes positions r, r + W, ... of the epoch's
    order, so after k micro-batches of b samples the first k·b·W positions are used, whatever W is.
    """
    if state.get("stream"):
        raise ValueError(
            "the checkpoint streamed its training data, this run has a map-style dataset"
        )
    current = data_state_dict(DataPosition(), sampler, batch_size)
    # drop_last only decides the epoch's incomplete tail (a pipeline drops it): positions before
    # it mean the same either way.
    for key in ("seed", "dataset_size", "shuffle"):
        if state.get(key) != current[key]:
            raise ValueError(
                f"data {key} differs: checkpoint has {state.get(key)!r}, this run has {current[key]!r}"
            )
    consumed = int(state["batches_consumed"])
    saved_batch = int(state["per_device_batch_size"]) * int(state["world_size"])
    batch = batch_size * sampler.world_size
    if saved_batch != batch:
        samples = consumed * saved_batch
        if samples % batch:
            raise ValueError(
                f"the checkpoint is {samples} samples into epoch {state['epoch']} "
                f"({state['world_size']} ranks x {state['per_device_batch_size']}), which is not a "
                f"whole number of this run's micro-batches ({sampler.world_size} ranks x "
                f"{batch_size}): keep per_device_train_batch_size x world size at {saved_batch}"
            )
        consumed = samples // batch
    return DataPosition(epoch=int(state["epoch"]), batches_consumed=consumed)


def stream_data_state_dict(
    position: DataPosition, world_size: int, batch_size: int, num_workers: int
) -> dict[str, Any]:
    """What `data_state.pt` holds for a streaming training set (each rank's place is its own file)."""
    return {
        **position.state_dict(),
        "stream": True,
        "world_size": world_size,
        "per_device_batch_size": batch_size,
        "num_workers": num_workers,
    }


def check_stream_data_state(
    state: dict[str, Any], rank_state: dict[str, Any] | None, current: dict[str, Any]
) -> DataPosition:
    """The saved position of a streaming run, or ValueError naming what differs from `current`.

    A stream resumes only on the same data-parallel world size, per-device batch size and number of
    dataloader workers: each rank (and worker) continues its own part of the stream.
    """
    if not state.get("stream"):
        raise ValueError(
            "the checkpoint was trained on a map-style dataset, this run streams its training data"
        )
    for key, name in (
        ("world_size", "data-parallel ranks"),
        ("per_device_batch_size", "per_device_train_batch_size"),
        ("num_workers", "dataloader_num_workers"),
    ):
        if state.get(key) != current[key]:
            raise ValueError(
                f"streaming data resumes only with the same {name}: the checkpoint has "
                f"{state.get(key)}, this run {current[key]}"
            )
    if rank_state is None:
        raise ValueError("this rank's stream position (data_state_rank<r>.pt) is missing")
    return DataPosition(epoch=int(state["epoch"]), batches_consumed=int(state["batches_consumed"]))


__all__ = [
    "DataPosition",
    "EvalBatchSampler",
    "ResumableDistributedSampler",
    "batches_per_epoch",
    "check_data_state",
    "check_stream_data_state",
    "data_state_dict",
    "stream_data_state_dict",
]
