"""preprocess_dataset: packing by default, selection, shuffling, custom map functions, caching, ranks."""

from __future__ import annotations

import json

import pytest

from forgather.ml.data import preprocess as pre
from forgather.ml.data.errors import DatasetError
from forgather.ml.data.preprocess import preprocess_dataset, select_indices

pytestmark = pytest.mark.unit


@pytest.fixture
def docs(paragraphs):
    from datasets import Dataset

    return Dataset.from_dict({"text": paragraphs[:40], "n": list(range(40))})


def test_default_tokenizes_and_packs_into_blocks(docs, tokenizer):
    out = preprocess_dataset(docs, tokenizer, fn_kwargs={"max_length": 64, "packed": True})
    assert out.column_names == ["input_ids", "document_starts"]
    assert all(len(ids) <= 64 for ids in out["input_ids"])
    assert sum(len(s) for s in out["document_starts"]) == 40


@pytest.mark.parametrize(
    "select,expected",
    [
        (5, range(5)),
        ((2, 6), range(2, 6)),
        (range(1, 10, 3), range(1, 10, 3)),
        (slice(35, None), range(35, 40)),
        (99, range(40)),
    ],
)
def test_select_range_forms(select, expected):
    assert select_indices(40, select) == expected


def test_select_range_rejects_other_values():
    with pytest.raises(DatasetError, match="select_range"):
        select_indices(10, "1:2")


def test_select_then_shuffle_take_a_deterministic_random_subset(docs, tokenizer):
    def first_tokens(**kwargs):
        out = preprocess_dataset(docs, tokenizer, fn_kwargs={"max_length": 4096}, **kwargs)
        return [ids[1] for ids in out["input_ids"]]

    plain = first_tokens(select_range=5)
    assert len(plain) == 5
    shuffled = first_tokens(select_range=5, shuffle=True, seed=1)
    assert shuffled == first_tokens(select_range=5, shuffle=True, seed=1)
    assert shuffled != plain


def test_custom_map_fn_gets_tokenizer_and_feature_and_can_keep_columns(docs, tokenizer):
    def lengths(batch, tokenizer, feature, scale=1):
        ids = tokenizer(batch[feature], add_special_tokens=False)["input_ids"]
        return {"length": [scale * len(i) for i in ids]}

    out = preprocess_dataset(
        docs, tokenizer, map_fn=lengths, fn_kwargs={"scale": 2}, remove_columns=False
    )
    assert out.column_names == ["text", "n", "length"]
    assert out[0]["length"] == 2 * len(tokenizer(docs[0]["text"])["input_ids"])


def test_missing_feature_and_dataset_dict_are_errors(docs, tokenizer):
    from datasets import DatasetDict

    with pytest.raises(DatasetError, match="no feature 'body'"):
        preprocess_dataset(docs, tokenizer, feature="body")
    with pytest.raises(DatasetError, match="pass one split"):
        preprocess_dataset(DatasetDict({"train": docs}), tokenizer)


def test_results_of_file_backed_datasets_are_cached_by_datasets(tmp_path, paragraphs, tokenizer):
    from forgather.ml.data.corpus import load_text_dataset

    (tmp_path / "train.jsonl").write_text(
        "".join(json.dumps({"text": p}) + "\n" for p in paragraphs[:30])
    )
    data = load_text_dataset(tmp_path, "train", cache_dir=str(tmp_path / "cache"))
    first = preprocess_dataset(data, tokenizer, fn_kwargs={"max_length": 32, "packed": True})
    second = preprocess_dataset(data, tokenizer, fn_kwargs={"max_length": 32, "packed": True})
    assert first.cache_files and first.cache_files == second.cache_files
    assert first["input_ids"] == second["input_ids"]
    other = preprocess_dataset(data, tokenizer, fn_kwargs={"max_length": 16, "packed": True})
    assert other.cache_files != first.cache_files


def test_streaming_dataset_is_mapped_lazily(docs, tokenizer):
    stream = docs.to_iterable_dataset()
    out = preprocess_dataset(
        stream, tokenizer, select_range=(0, 10), fn_kwargs={"max_length": 4096}
    )
    rows = list(out)
    assert len(rows) == 10 and set(rows[0]) == {"input_ids", "document_starts"}


class FakeDist:
    def __init__(self, log):
        self.log = log

    def is_available(self):
        return True

    def is_initialized(self):
        return True

    def barrier(self):
        self.log.append("barrier")


@pytest.mark.parametrize(
    "local_rank,expected", [("0", ["map", "barrier"]), ("1", ["barrier", "map"])]
)
def test_local_rank_zero_maps_first_under_distributed(
    monkeypatch, docs, tokenizer, local_rank, expected
):
    import torch.distributed

    log: list[str] = []
    fake = FakeDist(log)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setattr(torch.distributed, "is_available", fake.is_available)
    monkeypatch.setattr(torch.distributed, "is_initialized", fake.is_initialized)
    monkeypatch.setattr(torch.distributed, "barrier", fake.barrier)

    def record(batch, tokenizer):
        log.append("map")
        return {"x": [1] * len(batch["text"])}

    preprocess_dataset(docs, tokenizer, map_fn=record, remove_columns=False)
    assert log[0] == expected[0] and log[-1] == expected[-1] and log.count("barrier") == 1


def test_no_barrier_without_a_process_group(monkeypatch, docs, tokenizer):
    import torch.distributed

    def fail():
        raise AssertionError("barrier called without a process group")

    monkeypatch.setattr(torch.distributed, "barrier", fail)
    assert not torch.distributed.is_initialized()
    with pre.local_main_process_first() as first:
        assert first
