"""DataCollatorForCausalLM: padding, labels masked on padding only, per-document position ids."""

from __future__ import annotations

import copy

import pytest
import torch

from forgather.ml.data.collator import DataCollatorForCausalLM

pytestmark = pytest.mark.unit


class Tok:
    def __init__(self, pad=0, eos=2):
        self.pad_token_id = pad
        self.eos_token_id = eos


def test_rows_are_right_padded_and_labels_are_ignored_only_on_padding():
    batch = DataCollatorForCausalLM(Tok(pad=0))([{"input_ids": [5, 6, 7]}, {"input_ids": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_a_real_eos_is_a_label_even_when_pad_equals_eos():
    collator = DataCollatorForCausalLM(Tok(pad=2, eos=2))
    batch = collator([{"input_ids": [1, 5, 2]}, {"input_ids": [1, 2]}])
    assert batch["input_ids"].tolist() == [[1, 5, 2], [1, 2, 2]]
    assert batch["labels"].tolist() == [[1, 5, 2], [1, 2, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_a_label_equal_to_the_pad_id_is_kept_on_real_tokens():
    batch = DataCollatorForCausalLM(Tok(pad=0))([{"input_ids": [0, 4, 0]}, {"input_ids": [4]}])
    assert batch["labels"].tolist() == [[0, 4, 0], [4, -100, -100]]


def test_position_ids_restart_at_each_document_start():
    collator = DataCollatorForCausalLM(Tok())
    batch = collator(
        [
            {"input_ids": [1, 5, 2, 1, 6, 7, 2], "document_starts": [0, 3]},
            {"input_ids": [8, 2, 1, 9], "document_starts": [2]},  # a continuation, then a start
        ]
    )
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3], [0, 1, 0, 1, 2, 3, 4]]


def test_position_ids_restart_after_eos_when_packed_and_no_document_starts():
    collator = DataCollatorForCausalLM(Tok(eos=2), packed_sequences=True)
    batch = collator([{"input_ids": [5, 2, 6, 7, 2, 8]}])
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2, 0]]
    unpacked = DataCollatorForCausalLM(Tok(eos=2))([{"input_ids": [5, 2, 6]}])
    assert unpacked["position_ids"].tolist() == [[0, 1, 2]]


def test_packed_sequences_false_ignores_document_starts():
    collator = DataCollatorForCausalLM(Tok(), packed_sequences=False)
    batch = collator([{"input_ids": [1, 2, 1, 2], "document_starts": [0, 2]}])
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3]]


def test_padding_positions_keep_counting_and_never_read_as_a_start():
    batch = DataCollatorForCausalLM(Tok())(
        [
            {"input_ids": [1, 2, 3, 4], "document_starts": [0]},
            {"input_ids": [1, 2], "document_starts": [0, 1]},
        ]
    )
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3], [0, 0, 1, 2]]


def test_pad_to_multiple_of_and_max_length():
    collator = DataCollatorForCausalLM(Tok(), pad_to_multiple_of=4, max_length=6)
    batch = collator(
        [{"input_ids": list(range(10, 19)), "document_starts": [0, 7]}, {"input_ids": [3]}]
    )
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"][0, :6].tolist() == list(range(10, 16))
    assert batch["labels"][0].tolist() == [*range(10, 16), -100, -100]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]


def test_given_labels_are_used_and_padded_with_ignore_index():
    collator = DataCollatorForCausalLM(Tok(), ignore_index=-1)
    batch = collator([{"input_ids": [5, 6], "labels": [-1, 6]}, {"input_ids": [7], "labels": [7]}])
    assert batch["labels"].tolist() == [[-1, 6], [7, -1]]


def test_tensor_inputs_and_no_position_ids():
    collator = DataCollatorForCausalLM(Tok(), return_position_ids=False)
    batch = collator([{"input_ids": torch.tensor([4, 5]), "document_starts": torch.tensor([0])}])
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    assert batch["input_ids"].tolist() == [[4, 5]]


def test_tokenizer_without_pad_token_is_not_changed(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.pad_token = None
    before = (tok.pad_token, tok.pad_token_id, tok.eos_token_id, len(tok))
    collator = DataCollatorForCausalLM(tok)
    batch = collator([{"input_ids": [1, 40, 2]}, {"input_ids": [1]}])
    assert (tok.pad_token, tok.pad_token_id, tok.eos_token_id, len(tok)) == before
    assert batch["input_ids"][1].tolist() == [1, tok.eos_token_id, tok.eos_token_id]
    assert batch["labels"][0].tolist() == [1, 40, 2]
    assert batch["labels"][1].tolist() == [1, -100, -100]


def test_collates_packed_dataset_rows(paragraphs, tokenizer):
    from forgather.ml.data.packing import block_tokenize_fn

    out = block_tokenize_fn({"text": paragraphs[:20]}, tokenizer, max_length=64, packed=True)
    rows = [
        {"input_ids": i, "document_starts": s}
        for i, s in zip(out["input_ids"], out["document_starts"], strict=True)
    ]
    batch = DataCollatorForCausalLM(tokenizer)(rows)
    for row, positions in zip(rows, batch["position_ids"].tolist(), strict=True):
        zeros = [i for i, p in enumerate(positions[: len(row["input_ids"])]) if p == 0]
        assert zeros == sorted({0, *row["document_starts"]})
    assert (batch["labels"] == -100).sum() == (batch["attention_mask"] == 0).sum()


def test_empty_batch_and_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="empty batch"):
        DataCollatorForCausalLM(Tok())([])
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        DataCollatorForCausalLM(Tok(), pad_to_multiple_of=0)
