"""The distributed environment, read only from the variables `torchrun` sets, and small collectives.

Without torchrun (no WORLD_SIZE) this is a single process: rank 0 of 1, and every helper is a no-op.
"""

from __future__ import annotations

import atexit
import gc
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistributedEnvironment:
    """Rank, world size and device of this process, and the process group when world_size > 1."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    master_addr: str | None = None
    master_port: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DistributedEnvironment:
        """Read RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT."""
        env = os.environ if env is None else env

        def integer(name: str, default: int) -> int:
            value = env.get(name)
            if value in (None, ""):
                return default
            try:
                return int(value)
            except ValueError:
                raise ValueError(
                    f"environment variable {name}={value!r} is not an integer"
                ) from None

        world_size = integer("WORLD_SIZE", 1)
        rank = integer("RANK", 0)
        local_rank = integer("LOCAL_RANK", 0)
        local_world_size = integer("LOCAL_WORLD_SIZE", world_size)
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad torchrun variables: RANK={rank} WORLD_SIZE={world_size}")
        if not 0 <= local_rank < local_world_size:
            raise ValueError(
                f"bad torchrun variables: LOCAL_RANK={local_rank} LOCAL_WORLD_SIZE={local_world_size}"
            )
        port = env.get("MASTER_PORT")
        return cls(
            rank=rank,
            local_rank=local_rank,
            world_size=world_size,
            local_world_size=local_world_size,
            master_addr=env.get("MASTER_ADDR"),
            master_port=int(port) if port else None,
        )

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main_process(self) -> bool:
        return self.local_rank == 0

    def default_device(self, requested: str | None = None) -> torch.device:
        """`requested` if given, else cuda:<local_rank> when CUDA is available, else cpu."""
        if requested is not None:
            device = torch.device(requested)
            if device.type == "cuda" and device.index is None:
                device = torch.device("cuda", self.local_rank)
            return device
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def init_process_group(
        self, device: torch.device, backend: str | None = None, timeout_s: float = 1800
    ) -> None:
        """Join the process group (nccl on CUDA, gloo otherwise) when world_size > 1."""
        if not self.is_distributed or dist.is_initialized():
            return
        if self.master_addr is None or self.master_port is None:
            raise RuntimeError(
                f"WORLD_SIZE={self.world_size} but MASTER_ADDR/MASTER_PORT are not set: start with torchrun"
            )
        if backend is None:
            backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend=backend,
            rank=self.rank,
            world_size=self.world_size,
            timeout=timedelta(seconds=timeout_s),
        )
        atexit.register(_collect_before_teardown)
        self.announce(device)

    def announce(self, device: torch.device) -> None:
        """All-reduce a probe over the new group and print one line per rank saying who joined.

        The line (on stderr, every rank) is what multi-node users grep when a run misbehaves: rank,
        world size, host, backend and master. A group whose ranks cannot reach each other fails here,
        at start, rather than at the first gradient.
        """
        probe = torch.tensor([1.0, float(self.rank)], device=device)
        dist.all_reduce(probe, op=dist.ReduceOp.SUM)
        ranks, rank_sum = int(probe[0].item()), int(probe[1].item())
        expected = self.world_size * (self.world_size - 1) // 2
        if ranks != self.world_size or rank_sum != expected:
            raise RuntimeError(
                f"all-reduce check failed: {ranks} ranks answered (rank sum {rank_sum}), "
                f"expected {self.world_size} (rank sum {expected})"
            )
        line = (
            f"rank {self.rank} of {self.world_size} (local rank {self.local_rank} of "
            f"{self.local_world_size}) on {socket.gethostname()}: joined the {dist.get_backend()} "
            f"group at {self.master_addr}:{self.master_port}; all-reduce over {ranks} ranks ok\n"
        )
        # one write: the ranks of a node share torchrun's stderr, and print() writes the text and
        # its newline separately, so lines of two ranks could run together
        sys.stderr.write(line)
        sys.stderr.flush()

    @property
    def initialized(self) -> bool:
        return self.is_distributed and dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.initialized:
            dist.barrier()

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Reduce `tensor` in place over all ranks ("sum", "mean" or "max") and return it."""
        if not self.initialized:
            return tensor
        if op == "mean":
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            tensor /= self.world_size
        elif op == "sum":
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        elif op == "max":
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        else:
            raise ValueError(f"unknown reduce op {op!r}")
        return tensor

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """`obj` from rank `src` on every rank."""
        if not self.initialized:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        """Every rank's `obj`, in rank order, on rank `dst` (None on the others)."""
        if not self.initialized:
            return [obj]
        box = [None] * self.world_size if self.rank == dst else None
        dist.gather_object(obj, box, dst=dst)
        return box

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.initialized:
            return [obj]
        box: list[Any] = [None] * self.world_size
        dist.all_gather_object(box, obj)
        return box

    def cleanup(self, failed: bool = False) -> None:
        """Leave the process group (if this process joined one).

        After a failure there is no barrier: the other ranks may be waiting in a collective this
        rank will never join, and waiting for them would hang instead of failing.
        """
        if self.initialized:
            if not failed:
                dist.barrier()
            dist.destroy_process_group()


def _collect_before_teardown() -> None:
    """Free what still holds a process group while the interpreter is whole (an `atexit` hook).

    `destroy_process_group` forgets the groups, but objects in reference cycles (an FSDP module's
    mesh, the trainer's checkpoint groups) keep the C++ group alive until the interpreter's own
    teardown collects them; a gloo worker thread that then needs the GIL to free a tensor is
    stopped mid-destructor and the process dies with "terminate called without an active
    exception" (SIGABRT) after a successful run. Collecting here, before that teardown, destroys
    the group while its threads can still finish. Collected until nothing more is freed (a
    finalizer run by one pass can release the last reference to another cycle).
    """
    for _ in range(4):
        if not gc.collect():
            break


__all__ = ["DistributedEnvironment"]
