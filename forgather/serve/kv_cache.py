"""A slot-based KV cache for continuous batching, usable by any decoder that calls ``cache.update``.

The store keeps, per layer, keys and values shaped ``(slots, kv_heads, max_len + 1, head_dim)``: slot
``s`` holds one sequence, position ``p`` of that sequence lives at index ``p``, and the extra last
index is a trash column that rows without work write to. A :class:`CacheView` is what one forward
pass sees: Hugging Face models (and forgather's own) call ``view.update(key, value, layer_idx)``
with the new tokens' keys and values; the view writes them at their positions and returns the keys
and values of the batch's slots up to ``kv_len``, which the model attends to through the 4-D mask
the engine builds for the same step. Buffers are allocated on the first update of each layer, so
the store needs no knowledge of the model's head layout.
"""

from __future__ import annotations

from typing import Any

import torch


class SlotKVCache:
    """Keys and values of ``slots`` sequences of up to ``max_len`` tokens each."""

    def __init__(self, slots: int, max_len: int, device: torch.device, dtype: torch.dtype):
        self.slots = slots
        self.max_len = max_len
        self.trash = max_len
        self.device = device
        self.dtype = dtype
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.row_index = torch.arange(slots, device=device)

    def buffers(self, layer_idx: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The key and value buffers of a layer, allocated from the first keys it sees."""
        keys = self.keys.get(layer_idx)
        if keys is None:
            shape = (self.slots, like.shape[1], self.max_len + 1, like.shape[3])
            keys = torch.zeros(shape, device=self.device, dtype=self.dtype)
            self.keys[layer_idx] = keys
            self.values[layer_idx] = torch.zeros_like(keys)
        return keys, self.values[layer_idx]

    def nbytes(self) -> int:
        """Bytes held by the allocated buffers."""
        return sum(
            t.numel() * t.element_size() for t in (*self.keys.values(), *self.values.values())
        )

    def copy_prefix(self, source: int, targets: list[int], length: int) -> None:
        """Copy the first ``length`` positions of slot ``source`` into each slot of ``targets``."""
        if not targets or length == 0:
            return
        index = torch.tensor(targets, device=self.device)
        for store in (self.keys, self.values):
            for buffer in store.values():
                buffer[index, :, :length] = buffer[source, :, :length]

    def prefill_view(self, slot: int, start: int, length: int) -> CacheView:
        """A view for ``length`` new tokens of one sequence, at positions ``start …``."""
        return CacheView(
            self, "span", slice(slot, slot + 1), (start, start + length), start + length
        )

    def batch_view(self, slots: torch.Tensor, positions: torch.Tensor, kv_len: int) -> CacheView:
        """A view for new tokens of several sequences: ``positions`` (rows, new) says where each
        is written in its slot of ``slots`` (rows,) (padding: the trash column); the keys read are
        gathered from those slots."""
        return CacheView(self, "batch", slots, positions, kv_len)

    def decode_view(self, rows: int, positions: torch.Tensor, kv_len: int) -> CacheView:
        """A view for one new token in each of slots ``0 … rows-1``, written at ``positions``."""
        return CacheView(self, "decode", self.row_index[:rows], positions, kv_len)


class CacheView:
    """The cache as one forward pass sees it (duck-types ``transformers.Cache`` where models use it).

    ``kind`` is ``span`` (one sequence, consecutive positions: plain slicing), ``decode`` (one token
    in each of the first rows' slots, read as a view) or ``batch`` (several sequences' new tokens,
    read by gathering their slots).
    """

    is_compileable = False

    def __init__(
        self,
        store: SlotKVCache,
        kind: str,
        rows: slice | torch.Tensor,
        where: tuple[int, int] | torch.Tensor,
        kv_len: int,
    ):
        self.store = store
        self.kind = kind
        self.rows = rows
        self.where = where
        self.kv_len = kv_len

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys/values (batch, kv_heads, new, head_dim); return the batch's keys/values."""
        keys, values = self.store.buffers(layer_idx, key)
        if self.kind == "span":
            start, stop = self.where
            keys[self.rows, :, start:stop] = key
            values[self.rows, :, start:stop] = value
            return keys[self.rows, :, : self.kv_len], values[self.rows, :, : self.kv_len]
        if self.kind == "decode":
            keys[self.rows, :, self.where] = key[:, :, 0]
            values[self.rows, :, self.where] = value[:, :, 0]
            count = self.rows.shape[0]
            return keys[:count, :, : self.kv_len], values[:count, :, : self.kv_len]
        slots = self.rows[:, None].expand_as(self.where)
        keys[slots, :, self.where] = key.transpose(1, 2)
        values[slots, :, self.where] = value.transpose(1, 2)
        return keys[self.rows, :, : self.kv_len], values[self.rows, :, : self.kv_len]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Keys before the new tokens (forgather's model sizes its mask from it)."""
        if self.kind == "span":
            return self.where[0]
        if self.kind == "decode":
            return self.kv_len - 1
        return self.kv_len - self.where.shape[1]

    def __len__(self) -> int:
        return len(self.store.keys)


def visible_keys(
    key_positions: torch.Tensor, query_positions: torch.Tensor, window: int | None = None
) -> torch.Tensor:
    """True where a query at a position may attend the cached key at a position (broadcast):
    every earlier key and itself, only the last ``window`` of them for a sliding-window model."""
    allowed = key_positions <= query_positions
    if window is not None:
        allowed = allowed & (key_positions > query_positions - window)
    return allowed
