"""Where a run's checkpoints live across nodes: one shared directory, or one directory per node.

On one machine, or on nodes that mount the output directory from a shared filesystem (NFS), every rank
sees the same checkpoint directory. On nodes with local disks (no shared filesystem) each node has its
own directory at the same path, and a rank sees only its node's files. `detect_storage` finds out which
by experiment (every rank creates a probe file and looks for everybody else's), so nothing needs to be
configured; ranks that see each other's probes form one *storage group*, whose lowest rank (its
*leader*) does the directory work (creating, renaming, pruning) for the group.

`sync_files` copies files between the groups' directories through the process group (a gloo group of
the leaders, so it works beside NCCL): each file goes from the first group that has it to every group
that lacks it, in chunks, so no node needs a copy of the whole checkpoint in memory.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from forgather.ml.train.checkpoint_format import CheckpointError

PROBE_PREFIX = ".storage-probe-"
CHUNK_BYTES = 16 << 20


@dataclass
class StorageGroups:
    """The storage groups of a run (ranks that share one directory), as seen by rank `rank`."""

    rank: int
    groups: tuple[tuple[int, ...], ...]
    leaders_group: Any = field(default=None, repr=False)

    @property
    def shared(self) -> bool:
        """True when every rank sees the same directory (one machine, or a shared filesystem)."""
        return len(self.groups) == 1

    @property
    def own_group(self) -> tuple[int, ...]:
        return next(group for group in self.groups if self.rank in group)

    @property
    def leader(self) -> int:
        return self.own_group[0]

    @property
    def is_leader(self) -> bool:
        return self.rank == self.leader

    @property
    def leaders(self) -> list[int]:
        return [group[0] for group in self.groups]

    def describe(self) -> str:
        return ", ".join(
            f"ranks {group[0]}-{group[-1]}" if len(group) > 1 else f"rank {group[0]}"
            for group in self.groups
        )


def single_process() -> StorageGroups:
    return StorageGroups(rank=0, groups=((0,),))


def detect_storage(directory: str | os.PathLike, env: Any) -> StorageGroups:
    """Which ranks share `directory` (created if missing); all ranks must call this together."""
    if env is None or not env.initialized:
        return single_process()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    token = env.broadcast_object(uuid.uuid4().hex)
    own = directory / f"{PROBE_PREFIX}{token}-{env.rank}"
    own.write_bytes(b"")
    env.barrier()
    # Look each name up (no directory listing): a name never looked up before is asked of the
    # server on NFS, where a listing may come from a stale cache.
    seen = [r for r in range(env.world_size) if (directory / f"{PROBE_PREFIX}{token}-{r}").exists()]
    views = env.all_gather_object(seen)
    env.barrier()
    own.unlink(missing_ok=True)
    groups = tuple(sorted({tuple(view) for view in views}))
    members = sorted(rank for group in groups for rank in group)
    if members != list(range(env.world_size)):
        raise CheckpointError(
            f"{directory}: the ranks see the directory inconsistently ({list(groups)}): a shared "
            "filesystem that shows some nodes' files and not others'; give every node the same "
            "mount, or local disks of its own"
        )
    storage = StorageGroups(rank=env.rank, groups=groups)
    if not storage.shared:
        # Every rank takes part in creating a group, leaders or not.
        storage.leaders_group = dist.new_group(ranks=storage.leaders, backend="gloo")
    return storage


def sync_files(root: str | os.PathLike, names: list[str], storage: StorageGroups, env: Any) -> int:
    """Give every storage group's `root` each file of `names` (relative paths) that another group's
    `root` has; all ranks call this together. Returns the bytes this rank received. CheckpointError
    (on every rank) when a file is in no group's directory."""
    if storage.shared:
        return 0
    root = Path(root)
    names = sorted(set(names))
    have = (
        {name: (root / name).stat().st_size for name in names if (root / name).is_file()}
        if storage.is_leader
        else {}
    )
    listings = env.all_gather_object(have)
    leaders = storage.leaders
    plan = []
    for name in names:
        holders = [leader for leader in leaders if name in listings[leader]]
        if not holders:
            raise CheckpointError(
                f"{root}: {name} is on no node (each node keeps the shards its ranks wrote: were "
                "they lost, or is a node missing from this run?)"
            )
        if len(holders) < len(leaders):
            plan.append((name, holders[0], listings[holders[0]][name]))
    received = 0
    if storage.is_leader:
        for name, source, size in plan:
            received += _broadcast_file(root / name, source, size, storage)
    env.barrier()
    return received


def _broadcast_file(path: Path, source: int, size: int, storage: StorageGroups) -> int:
    """Send file `path` from leader `source` to every other leader (each writes it unless it has it)."""
    sending = storage.rank == source
    keep = not sending and not path.is_file()
    temp = path.with_name(f".{path.name}.part")
    if keep:
        path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("rb") if sending else (temp.open("wb") if keep else None)
    try:
        offset = 0
        while True:
            count = min(CHUNK_BYTES, size - offset)
            buffer = torch.empty(count, dtype=torch.uint8)
            if sending and count:
                handle.readinto(memoryview(buffer.numpy()))
            if count:
                dist.broadcast(buffer, src=source, group=storage.leaders_group)
            if keep and count:
                handle.write(memoryview(buffer.numpy()))
            offset += count
            if offset >= size:
                break
    finally:
        if handle is not None:
            handle.close()
    if keep:
        os.replace(temp, path)
        return size
    return 0


__all__ = ["StorageGroups", "detect_storage", "single_process", "sync_files"]
