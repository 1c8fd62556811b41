"""Decode steps replayed as CUDA graphs: one kernel launch per step instead of hundreds.

A decode step's cost on a GPU is mostly Python launching kernels. The engine's decode inputs have a
fixed layout (one token per slot, written into the slot cache at a given position, attending the
cache's first keys under a mask), so a step can be captured once per shape and replayed: rows are
padded to a power of two (up to ``--max-batch-size``) and the keys read to a power of two (at least
64, up to ``--max-model-len``). Every shape is captured when the engine warms up (largest first,
so they share one memory pool), never in the middle of serving, where a capture would stall every
running stream. Padding rows write to the cache's trash column and attend only key 0, exactly like the rows of
free slots in an eager step. If a model cannot be captured (it synchronises with the CPU inside its
forward, say), the engine logs why and decodes eagerly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from forgather.serve.kv_cache import CacheView, SlotKVCache, visible_keys

MIN_KEYS = 64

Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, CacheView], torch.Tensor]


def bucket(n: int, limit: int, minimum: int = 1) -> int:
    """The smallest power of two >= max(n, minimum), at most ``limit``."""
    size = minimum
    while size < n:
        size *= 2
    return min(size, limit)


@dataclass
class CapturedStep:
    graph: torch.cuda.CUDAGraph
    inputs: torch.Tensor  # (3, rows): token ids, positions, cache write positions
    logits: torch.Tensor  # (rows, vocab)


class DecodeGraphs:
    """Captured decode steps of one engine, by (rows, keys)."""

    def __init__(
        self,
        forward: Forward,
        cache: SlotKVCache,
        positions: torch.Tensor,
        window: int | None = None,
    ):
        self.forward = forward
        self.cache = cache
        self.positions = positions
        self.window = window
        self.steps: dict[tuple[int, int], CapturedStep] = {}
        self.pool = torch.cuda.graph_pool_handle()

    def shapes(self) -> list[tuple[int, int]]:
        """Every (rows, keys) a decode step can take, largest first."""
        rows = sorted({bucket(n, self.cache.slots) for n in range(1, self.cache.slots + 1)})
        keys = sorted(
            {bucket(n, self.cache.max_len, MIN_KEYS) for n in range(1, self.cache.max_len + 1)}
        )
        return sorted(((r, k) for r in rows for k in keys), reverse=True)

    def capture_all(self) -> None:
        """Capture every shape now (at start-up), so serving never pauses to capture."""
        for shape in self.shapes():
            if shape not in self.steps:
                self._capture(*shape)

    def run(self, table: list[list[int]], kv_len: int) -> torch.Tensor:
        """Logits (len(table[0]), vocab) of a decode step with the engine's input table."""
        rows = len(table[0])
        shape = (bucket(rows, self.cache.slots), bucket(kv_len, self.cache.max_len, MIN_KEYS))
        step = self.steps.get(shape) or self._capture(*shape)
        padding = shape[0] - rows
        host = torch.tensor(
            [
                table[0] + [0] * padding,
                table[1] + [0] * padding,
                table[2] + [self.cache.trash] * padding,
            ],
            dtype=torch.long,
        )
        step.inputs.copy_(host, non_blocking=True)
        step.graph.replay()
        return step.logits[:rows]

    def _capture(self, rows: int, keys: int) -> CapturedStep:
        device = self.cache.device
        inputs = torch.zeros((3, rows), dtype=torch.long, device=device)
        inputs[2] = self.cache.trash  # warm-up and capture must not write into live slots

        def step() -> torch.Tensor:
            position_ids = inputs[1, :, None]
            mask = visible_keys(self.positions[None, :keys], position_ids, self.window)
            mask = mask[:, None, None, :]
            view = self.cache.decode_view(rows, inputs[2], keys)
            return self.forward(inputs[0, :, None], position_ids, mask, view)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            logits = step()
        captured = CapturedStep(graph, inputs, logits)
        self.steps[(rows, keys)] = captured
        return captured
