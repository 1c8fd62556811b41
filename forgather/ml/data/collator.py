"""Causal-LM collator: right padding, labels masked on padding only, per-document position ids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class DataCollatorForCausalLM:
    """Collate examples with `input_ids` (and optionally `document_starts`, `labels`) into tensors.

    Returns `input_ids`, `labels`, `attention_mask` and (unless `return_position_ids=False`)
    `position_ids`, all `torch.long` of shape `(batch, length)`:

    * rows are right-padded with the tokenizer's pad token (its EOS if it has none, else 0) to the
      longest row, rounded up to `pad_to_multiple_of`; rows longer than `max_length` are truncated;
    * `labels` are the `input_ids` (or the example's own `labels`), with `ignore_index` on padding
      positions only. Padding is known from each row's length, never from token values, so a real EOS
      is a label even when `pad_token_id == eos_token_id`. The model shifts labels itself;
    * `attention_mask` is 1 on real tokens, 0 on padding;
    * `position_ids` count from 0 at the start of each row and restart at 0 at every document start
      of a packed row: the offsets in the example's `document_starts` (see `block_tokenize_fn`), or,
      when an example has none and `packed_sequences=True`, right after each EOS token. With
      `packed_sequences=False` they never restart; with `None` (default) `document_starts` is used when
      present. On padding they keep counting from the last real token, so that a position 0 always
      marks the start of a real sequence.

    The tokenizer is only read (its pad/EOS ids), never changed.
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: int | None = None,
        ignore_index: int = -100,
        pad_to_multiple_of: int | None = None,
        packed_sequences: bool | None = None,
        return_position_ids: bool = True,
    ):
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be at least 1, got {pad_to_multiple_of}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.ignore_index = ignore_index
        self.pad_to_multiple_of = pad_to_multiple_of
        self.packed_sequences = packed_sequences
        self.return_position_ids = return_position_ids
        pad = getattr(tokenizer, "pad_token_id", None)
        eos = getattr(tokenizer, "eos_token_id", None)
        self.pad_token_id = int(pad if pad is not None else eos if eos is not None else 0)
        self.eos_token_id = None if eos is None else int(eos)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(max_length={self.max_length}, ignore_index={self.ignore_index}, "
            f"pad_to_multiple_of={self.pad_to_multiple_of}, packed_sequences={self.packed_sequences}, "
            f"return_position_ids={self.return_position_ids}, pad_token_id={self.pad_token_id})"
        )

    def positions(self, ids: Sequence[int], starts: Sequence[int] | None) -> list[int]:
        """Position ids of one (unpadded) row."""
        restart = [False] * len(ids)
        if self.packed_sequences is not False:
            if starts is not None:
                for start in starts:
                    if 0 <= start < len(ids):
                        restart[start] = True
            elif self.packed_sequences and self.eos_token_id is not None:
                for index in range(len(ids) - 1):
                    if ids[index] == self.eos_token_id:
                        restart[index + 1] = True
        result: list[int] = []
        position = 0
        for index in range(len(ids)):
            if restart[index]:
                position = 0
            result.append(position)
            position += 1
        return result

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if not features:
            raise ValueError("DataCollatorForCausalLM: empty batch")
        rows = [_as_list(f["input_ids"]) for f in features]
        labels = [_as_list(f["labels"]) if f.get("labels") is not None else None for f in features]
        starts = [
            _as_list(f["document_starts"]) if f.get("document_starts") is not None else None
            for f in features
        ]
        if self.max_length is not None:
            rows = [row[: self.max_length] for row in rows]
            labels = [None if lab is None else lab[: self.max_length] for lab in labels]
        length = max(len(row) for row in rows)
        if self.pad_to_multiple_of:
            multiple = self.pad_to_multiple_of
            length = -(-length // multiple) * multiple
        batch = len(rows)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        label_ids = torch.full((batch, length), self.ignore_index, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        position_ids = torch.zeros((batch, length), dtype=torch.long)
        for index, row in enumerate(rows):
            n = len(row)
            if labels[index] is not None and len(labels[index]) != n:
                raise ValueError(f"example {index}: {len(labels[index])} labels for {n} input_ids")
            input_ids[index, :n] = torch.tensor(row, dtype=torch.long)
            attention_mask[index, :n] = 1
            real_labels = row if labels[index] is None else labels[index]
            label_ids[index, :n] = torch.tensor(real_labels, dtype=torch.long)
            if self.return_position_ids:
                pos = self.positions(row, starts[index])
                last = pos[-1] if pos else -1
                pos.extend(range(last + 1, last + 1 + length - n))
                position_ids[index] = torch.tensor(pos, dtype=torch.long)
        result = {"input_ids": input_ids, "labels": label_ids, "attention_mask": attention_mask}
        if self.return_position_ids:
            result["position_ids"] = position_ids
        return result


def _as_list(value: Any) -> list[int]:
    if hasattr(value, "tolist"):
        value = value.tolist()
    return [int(v) for v in value]


__all__ = ["DataCollatorForCausalLM"]
