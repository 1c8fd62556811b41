"""Block tokenizing for causal-LM training: documents -> fixed-size blocks of token ids.

`block_tokenize_fn` is meant for `Dataset.map(batched=True, remove_columns=...)`. For each batch it

1. tokenizes the `feature` texts **without** special tokens, then wraps every document as
   `[BOS] + tokens + [EOS]` (`add_bos` / `add_eos`); empty texts are skipped, and so are documents
   longer than `max_len` tokens (BOS/EOS included) when `max_len` is set;
2. cuts them into blocks of at most `max_length` tokens:

   * `packed=False`: every document starts a new block. With `overflow=True` a document longer than
     a block continues in further blocks, each starting with the last `stride` tokens of the previous
     one (overlap); with `overflow=False` the rest of a long document is dropped.
   * `packed=True, packing_strategy="greedy"`: documents are laid one after the other and blocks are
     filled in order. With `overflow=True` a document that does not fit in the current block is split:
     its first part fills the block and the rest continues the next block (again after `stride`
     tokens of overlap), so only the last block of a batch is short. With `overflow=False` a document
     that does not fit starts a new block and is cut at `max_length`.
   * `packed=True, packing_strategy="first_fit"` or `"best_fit"`: documents (with `overflow=True`,
     long documents first cut into `max_length` pieces as for `packed=False`) are sorted by length,
     longest first, and bin-packed: First-Fit Decreasing puts each piece in the first block with
     room for it, Best-Fit Decreasing in the block it fills best (least room left). Documents are
     only split when longer than a block, at the price of some padding.

3. drops blocks shorter than `min_len`, optionally shuffles the blocks (`shuffle_output`, seeded).

Continuations never get a fresh BOS: BOS only ever marks the true start of a document, and a block
that starts in the middle of a document starts with that document's next tokens (or its overlap).
The overlap tokens of a continuation are trained on twice; they give the continuation context.

The output has two columns: `input_ids` (one list per block) and `document_starts` (per block, the
offsets at which a document's first token, its BOS when `add_bos`, lies in the block, ascending). A
continuation block does not list offset 0 unless a document really starts there (with a stride that
reaches back to a document's first token, that token and its start are repeated). The collator
restarts `position_ids` at 0 at each row start and at each listed offset.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator, Sequence
from typing import Any

from forgather.ml.data.errors import DatasetError

STRATEGIES = ("greedy", "first_fit", "best_fit")

Block = tuple[list[int], list[int]]  # (input_ids, document_starts)


def document_chunks(
    doc: Sequence[int], max_length: int, overflow: bool, stride: int
) -> Iterator[tuple[list[int], bool]]:
    """A document's blocks when it starts a block: (tokens, holds the document's first token)."""
    if len(doc) <= max_length or not overflow:
        yield list(doc[:max_length]), True
        return
    step = max_length - stride
    start = 0
    while True:
        yield list(doc[start : start + max_length]), start == 0
        if start + max_length >= len(doc):
            return
        start += step


def pack_separate(
    docs: list[list[int]], max_length: int, overflow: bool, stride: int
) -> list[Block]:
    """One document per block (long documents continue in further blocks when `overflow`)."""
    return [
        (chunk, [0] if first else [])
        for doc in docs
        for chunk, first in document_chunks(doc, max_length, overflow, stride)
    ]


def pack_greedy(docs: list[list[int]], max_length: int, overflow: bool, stride: int) -> list[Block]:
    """Fill blocks in document order (next fit); see the module docs for overflow and stride."""
    blocks: list[Block] = []
    ids: list[int] = []
    starts: list[int] = []

    def emit() -> None:
        nonlocal ids, starts
        if ids:
            blocks.append((ids, starts))
        ids, starts = [], []

    for doc in docs:
        if not overflow:
            piece = doc[:max_length]
            if len(ids) + len(piece) > max_length:
                emit()
            starts.append(len(ids))
            ids.extend(piece)
            continue
        pos = 0  # the next token of `doc` to place
        while pos < len(doc):
            if len(ids) == max_length:
                emit()
            if pos == 0:
                starts.append(len(ids))
            taken = doc[pos : pos + max_length - len(ids)]
            ids.extend(taken)
            pos += len(taken)
            if pos < len(doc):  # the document goes on in the next block, after the overlap
                emit()
                pos -= min(stride, pos)
    emit()
    return blocks


class _FirstFitTree:
    """Max segment tree over block capacities: the leftmost block with at least `size` room."""

    def __init__(self, count: int, capacity: int):
        self.size = 1
        while self.size < max(count, 1):
            self.size *= 2
        self.tree = [capacity] * (2 * self.size)

    def leftmost(self, need: int) -> int:
        node = 1
        while node < self.size:
            node = 2 * node if self.tree[2 * node] >= need else 2 * node + 1
        return node - self.size

    def set(self, index: int, room: int) -> None:
        node = index + self.size
        self.tree[node] = room
        node //= 2
        while node:
            self.tree[node] = max(self.tree[2 * node], self.tree[2 * node + 1])
            node //= 2


def pack_bins(
    docs: list[list[int]], max_length: int, overflow: bool, stride: int, best: bool
) -> list[Block]:
    """First-Fit Decreasing (`best=False`) or Best-Fit Decreasing (`best=True`) bin packing."""
    pieces = [piece for doc in docs for piece in document_chunks(doc, max_length, overflow, stride)]
    order = sorted(range(len(pieces)), key=lambda i: (-len(pieces[i][0]), i))
    bins: list[Block] = []
    if best:
        rooms: list[tuple[int, int]] = []  # (room left, bin index), sorted
        for i in order:
            chunk, first = pieces[i]
            at = bisect.bisect_left(rooms, (len(chunk), -1))
            if at < len(rooms):
                room, index = rooms.pop(at)
            else:
                room, index = max_length, len(bins)
                bins.append(([], []))
            ids, starts = bins[index]
            if first:
                starts.append(len(ids))
            ids.extend(chunk)
            bisect.insort(rooms, (room - len(chunk), index))
    else:
        tree = _FirstFitTree(len(pieces), max_length)
        for i in order:
            chunk, first = pieces[i]
            index = tree.leftmost(len(chunk))
            if index == len(bins):
                bins.append(([], []))
            ids, starts = bins[index]
            if first:
                starts.append(len(ids))
            ids.extend(chunk)
            tree.set(index, max_length - len(ids))
    return bins


def pack_documents(
    docs: list[list[int]],
    max_length: int = 512,
    overflow: bool = True,
    stride: int = 0,
    packed: bool = False,
    packing_strategy: str = "greedy",
    min_len: int = 1,
    shuffle_output: bool = False,
    seed: int = 0,
) -> list[Block]:
    """Pack token lists (already wrapped in BOS/EOS) into `(input_ids, document_starts)` blocks."""
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    if not 0 <= stride < max_length:
        raise ValueError(
            f"stride must be in [0, max_length), got {stride} (max_length {max_length})"
        )
    if packing_strategy not in STRATEGIES:
        raise ValueError(
            f"unknown packing_strategy {packing_strategy!r} (one of {', '.join(STRATEGIES)})"
        )
    docs = [doc for doc in docs if doc]
    if not packed:
        blocks = pack_separate(docs, max_length, overflow, stride)
    elif packing_strategy == "greedy":
        blocks = pack_greedy(docs, max_length, overflow, stride)
    else:
        blocks = pack_bins(docs, max_length, overflow, stride, packing_strategy == "best_fit")
    blocks = [block for block in blocks if len(block[0]) >= max(min_len, 1)]
    if shuffle_output:
        random.Random(seed).shuffle(blocks)
    return blocks


def special_id(tokenizer: Any, name: str) -> int:
    value = getattr(tokenizer, f"{name}_token_id", None)
    if value is None:
        raise ValueError(f"add_{name}=True but the tokenizer has no {name}_token")
    return int(value)


def block_tokenize_fn(
    features: dict[str, list],
    tokenizer: Any,
    feature: str = "text",
    max_length: int = 512,
    overflow: bool = True,
    stride: int = 0,
    packed: bool = False,
    packing_strategy: str = "greedy",
    add_bos: bool = True,
    add_eos: bool = True,
    min_len: int = 1,
    max_len: int | None = None,
    shuffle_output: bool = False,
    seed: int = 0,
) -> dict[str, list[list[int]]]:
    """Tokenize a batch of documents into blocks; for `Dataset.map(batched=True)` (see module docs).

    Returns `{"input_ids": [[...], ...], "document_starts": [[...], ...]}` with one row per block.
    """
    if feature not in features:
        raise DatasetError(
            f"block_tokenize_fn: no feature {feature!r} in the batch (columns: {', '.join(features)})"
        )
    texts = [text or "" for text in features[feature]]
    bos = [special_id(tokenizer, "bos")] if add_bos else []
    eos = [special_id(tokenizer, "eos")] if add_eos else []
    encoded = (
        tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else []
    )
    docs = [bos + list(ids) + eos for ids in encoded if len(ids)]
    if max_len is not None:
        docs = [doc for doc in docs if len(doc) <= max_len]
    blocks = pack_documents(
        docs,
        max_length=max_length,
        overflow=overflow,
        stride=stride,
        packed=packed,
        packing_strategy=packing_strategy,
        min_len=min_len,
        shuffle_output=shuffle_output,
        seed=seed,
    )
    return {
        "input_ids": [ids for ids, _ in blocks],
        "document_starts": [starts for _, starts in blocks],
    }


__all__ = ["STRATEGIES", "block_tokenize_fn", "pack_documents"]
