"""block_tokenize_fn / pack_documents: every strategy, overflow, stride, filters and the output contract."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from forgather.ml.data.errors import DatasetError
from forgather.ml.data.packing import block_tokenize_fn, pack_documents

pytestmark = pytest.mark.unit

BOS, EOS = 1, 2


def make_docs(lengths: list[int]) -> list[list[int]]:
    """Documents `[BOS, unique tokens..., EOS]` of the given total lengths (>= 2)."""
    return [
        [BOS] + [1000 * (i + 1) + j for j in range(n - 2)] + [EOS] for i, n in enumerate(lengths)
    ]


def random_lengths(seed: int, count: int = 40, low: int = 2, high: int = 90) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(low, high) for _ in range(count)]


MODES = [
    (False, "greedy"),
    (True, "greedy"),
    (True, "first_fit"),
    (True, "best_fit"),
]


def check_starts(blocks, docs):
    """Every listed start holds a BOS, and there is one start per document."""
    for ids, starts in blocks:
        assert starts == sorted(set(starts))
        assert all(0 <= start < len(ids) and ids[start] == BOS for start in starts)
        assert ids.count(BOS) == len(starts)
    assert sum(len(starts) for _, starts in blocks) == len(docs)


@pytest.mark.parametrize("packed,strategy", MODES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_overflow_conserves_every_token_and_no_block_exceeds_max_length(packed, strategy, seed):
    docs = make_docs(random_lengths(seed))
    blocks = pack_documents(docs, max_length=32, packed=packed, packing_strategy=strategy)
    assert all(1 <= len(ids) <= 32 for ids, _ in blocks)
    assert Counter(t for ids, _ in blocks for t in ids) == Counter(t for d in docs for t in d)
    check_starts(blocks, docs)


@pytest.mark.parametrize("packed,strategy", MODES)
def test_without_overflow_long_documents_are_cut_to_one_block(packed, strategy):
    docs = make_docs([10, 50, 20, 33, 5])
    blocks = pack_documents(
        docs, max_length=32, overflow=False, packed=packed, packing_strategy=strategy
    )
    kept = Counter(t for ids, _ in blocks for t in ids)
    assert kept == Counter(t for d in docs for t in d[:32])
    assert all(len(ids) <= 32 for ids, _ in blocks)
    check_starts(blocks, docs)


def test_greedy_packing_with_overflow_is_the_token_stream_cut_into_full_blocks():
    docs = make_docs(random_lengths(3))
    total = sum(map(len, docs))
    blocks = pack_documents(docs, max_length=64, packed=True)
    assert [t for ids, _ in blocks for t in ids] == [t for d in docs for t in d]
    assert len(blocks) == math.ceil(total / 64)
    assert all(len(ids) == 64 for ids, _ in blocks[:-1])


def test_greedy_packing_without_overflow_never_splits_a_document():
    docs = make_docs([20, 30, 10, 25, 40, 5])
    blocks = pack_documents(docs, max_length=50, overflow=False, packed=True)
    assert [ids for ids, _ in blocks] == [docs[0] + docs[1], docs[2] + docs[3], docs[4] + docs[5]]
    assert [starts for _, starts in blocks] == [[0, 20], [0, 10], [0, 40]]


def test_unpacked_blocks_hold_one_document_and_continuations_list_no_start():
    docs = make_docs([10, 70])
    blocks = pack_documents(docs, max_length=32)
    assert [len(ids) for ids, _ in blocks] == [10, 32, 32, 6]
    assert [starts for _, starts in blocks] == [[0], [0], [], []]
    assert blocks[2][0][0] != BOS  # a continuation gets no fresh BOS


def test_stride_repeats_the_last_tokens_of_the_previous_block():
    doc = make_docs([70])[0]
    blocks = pack_documents([doc], max_length=32, stride=8)
    for (previous, _), (current, starts) in zip(blocks, blocks[1:], strict=False):
        assert current[:8] == previous[-8:]
        assert starts == []
    rebuilt = blocks[0][0] + [t for ids, _ in blocks[1:] for t in ids[8:]]
    assert rebuilt == doc
    assert [len(ids) for ids, _ in blocks] == [32, 32, 22]  # steps of 32 - 8 = 24


def test_stride_in_greedy_packing_overlaps_only_the_split_document():
    docs = make_docs([20, 40])
    blocks = pack_documents(docs, max_length=32, packed=True, stride=4)
    first, second = blocks[0][0], blocks[1][0]
    assert first == docs[0] + docs[1][:12]
    assert second[:4] == docs[1][8:12] and second[4:] == docs[1][12:]
    assert blocks[1][1] == []


def test_stride_reaching_back_to_a_document_start_repeats_the_start():
    docs = make_docs([30, 10])
    blocks = pack_documents(docs, max_length=32, packed=True, stride=4)
    # docs[1] starts at offset 30 with 2 tokens in block 0; the overlap of 4 reaches its BOS
    assert blocks[0][1] == [0, 30]
    assert blocks[1][0] == docs[1] and blocks[1][1] == [0]


@pytest.mark.parametrize("strategy", ["first_fit", "best_fit"])
def test_bin_packing_keeps_short_documents_whole_and_no_two_blocks_could_merge(strategy):
    docs = make_docs(random_lengths(7, count=60, high=64))
    blocks = pack_documents(docs, max_length=64, packed=True, packing_strategy=strategy)
    for doc in docs:  # each document is one contiguous run of one block
        assert sum(1 for ids, _ in blocks if doc[1] in ids) == 1
        ids = next(ids for ids, _ in blocks if doc[0 if len(doc) < 2 else 1] in ids)
        start = ids.index(doc[1]) - 1
        assert ids[start : start + len(doc)] == doc
    lengths = [len(ids) for ids, _ in blocks]
    assert all(a + b > 64 for i, a in enumerate(lengths) for b in lengths[i + 1 :])
    assert len(blocks) >= math.ceil(sum(lengths) / 64)


def segment_lengths(blocks) -> list[list[int]]:
    """Per block, the lengths of the documents in it (blocks made of whole documents)."""
    return [
        [b - a for a, b in zip(starts, [*starts[1:], len(ids)], strict=True)]
        for ids, starts in blocks
    ]


def test_first_fit_and_best_fit_decreasing_place_pieces_as_defined():
    # Sorted: 8, 6, 3, 3, 1 into blocks of 10: 8 -> A (2 left); 6 -> B (4 left); 3 -> B (1 left);
    # 3 -> C (7 left); 1 -> first fit: A, the first with room; best fit: B, the one it fills best.
    docs = [[BOS], *make_docs([8, 6, 3, 3])]
    ff = pack_documents(docs, max_length=10, packed=True, packing_strategy="first_fit")
    bf = pack_documents(docs, max_length=10, packed=True, packing_strategy="best_fit")
    assert segment_lengths(ff) == [[8, 1], [6, 3], [3]]
    assert segment_lengths(bf) == [[8], [6, 3, 1], [3]]


def test_bin_packing_uses_no_more_blocks_than_greedy_on_real_paragraphs(paragraphs, tokenizer):
    batch = {"text": paragraphs}
    counts = {
        strategy: len(
            block_tokenize_fn(
                batch,
                tokenizer,
                max_length=128,
                packed=True,
                overflow=False,
                packing_strategy=strategy,
            )["input_ids"]
        )
        for strategy in ("greedy", "first_fit", "best_fit")
    }
    assert counts["best_fit"] <= counts["greedy"] and counts["first_fit"] <= counts["greedy"]


def test_min_len_drops_short_blocks_and_max_len_skips_long_documents():
    docs = make_docs([10, 70, 5])
    blocks = pack_documents(docs, max_length=32, min_len=8)
    assert [len(ids) for ids, _ in blocks] == [10, 32, 32]
    batch_docs = block_tokenize_fn(
        {"text": ["a b", "a " * 50, "c"]}, WordTokenizer(), max_length=64, max_len=10
    )
    assert [len(ids) for ids in batch_docs["input_ids"]] == [4, 3]


def test_shuffle_output_permutes_blocks_deterministically():
    docs = make_docs(random_lengths(5))
    plain = pack_documents(docs, max_length=16)
    shuffled = pack_documents(docs, max_length=16, shuffle_output=True, seed=3)
    assert shuffled == pack_documents(docs, max_length=16, shuffle_output=True, seed=3)
    assert shuffled != plain and sorted(map(str, shuffled)) == sorted(map(str, plain))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"stride": 32}, "stride"),
        ({"stride": -1}, "stride"),
        ({"max_length": 0}, "max_length"),
        ({"packing_strategy": "worst_fit", "packed": True}, "packing_strategy"),
    ],
)
def test_invalid_arguments_are_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pack_documents(make_docs([5]), **{"max_length": 32, **kwargs})


# ---- block_tokenize_fn with a tokenizer -------------------------------------------------------


class WordTokenizer:
    """Whitespace tokenizer with BOS=1, EOS=2, words numbered from 10."""

    bos_token_id, eos_token_id = BOS, EOS

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def __call__(self, texts, add_special_tokens=True, verbose=True):
        assert add_special_tokens is False
        return {
            "input_ids": [
                [self.vocab.setdefault(w, 10 + len(self.vocab)) for w in t.split()] for t in texts
            ]
        }


def test_documents_get_bos_and_eos_and_empty_texts_are_skipped():
    out = block_tokenize_fn({"text": ["a b c", "", None, "d"]}, WordTokenizer(), max_length=8)
    assert out == {"input_ids": [[1, 10, 11, 12, 2], [1, 13, 2]], "document_starts": [[0], [0]]}
    out = block_tokenize_fn({"text": ["a b"]}, WordTokenizer(), add_bos=False, add_eos=False)
    assert out["input_ids"] == [[10, 11]]


def test_missing_feature_and_missing_special_tokens_are_errors():
    with pytest.raises(DatasetError, match="no feature 'body'"):
        block_tokenize_fn({"text": ["a"]}, WordTokenizer(), feature="body")

    class NoBos(WordTokenizer):
        bos_token_id = None

    with pytest.raises(ValueError, match="bos_token"):
        block_tokenize_fn({"text": ["a"]}, NoBos())


def test_real_tokenizer_blocks_decode_back_to_the_documents(paragraphs, tokenizer):
    texts = paragraphs[:30]
    out = block_tokenize_fn({"text": texts}, tokenizer, max_length=64, packed=True)
    decoded = tokenizer.decode([t for ids in out["input_ids"] for t in ids])
    assert decoded == "".join(f"<|BOS|>{t}<|EOS|>" for t in texts)
    assert all(len(ids) <= 64 for ids in out["input_ids"])


def test_works_under_dataset_map_with_batches(paragraphs, tokenizer):
    from datasets import Dataset

    data = Dataset.from_dict({"text": paragraphs[:50], "n": list(range(50))})
    packed = data.map(
        block_tokenize_fn,
        batched=True,
        batch_size=16,
        remove_columns=data.column_names,
        fn_kwargs={
            "tokenizer": tokenizer,
            "max_length": 48,
            "packed": True,
            "packing_strategy": "best_fit",
        },
    )
    assert packed.column_names == ["input_ids", "document_starts"]
    assert sum(len(s) for s in packed["document_starts"]) == 50
    assert max(len(ids) for ids in packed["input_ids"]) <= 48
