"""Whole-matrix updates of sharded (FSDP2 DTensor) parameters.

Some optimizers need a parameter's whole gradient to compute its update (Muon's orthogonalisation,
Apollo's projection, SinkGD's row and column norms). Under FSDP2 each rank holds a shard: `whole`
gathers the gradient, every rank computes the same update from it, and `shard_like` keeps the
rank's own part, without communication. Correct for any placement, at the price of one all-gather
per such parameter and step (and a full-size update in memory while it is applied).
"""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor, distribute_tensor


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` itself, or the whole tensor a DTensor is a shard of (gathered)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def shard_like(result: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`result` (computed identically on every rank) placed like `reference` when that is a
    DTensor (each rank keeps its own part), else `result` itself."""
    if not isinstance(reference, DTensor):
        return result
    return distribute_tensor(
        result, reference.device_mesh, reference.placements, src_data_rank=None
    )


__all__ = ["shard_like", "whole"]
