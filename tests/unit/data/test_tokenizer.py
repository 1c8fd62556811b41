"""train_tokenizer and load_or_train_tokenizer: byte-level BPE, special tokens, caching by digest."""

from __future__ import annotations

import json
import unicodedata

import pytest

from forgather.ml.data import tokenizer as tok_module
from forgather.ml.data.errors import DatasetError
from forgather.ml.data.tokenizer import load_or_train_tokenizer, train_tokenizer

pytestmark = pytest.mark.unit


def test_trained_tokenizer_has_the_vocab_size_and_special_token_ids(tokenizer):
    assert len(tokenizer) == 512
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) == (
        "<|PAD|>",
        "<|BOS|>",
        "<|EOS|>",
        "<|UNK|>",
    )
    assert [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id] == [0, 1, 2]
    assert tokenizer.unk_token_id == 3
    assert tokenizer.model_max_length == 2048


def test_encoding_adds_no_special_tokens_by_default(tokenizer):
    ids = tokenizer("It is a truth universally acknowledged")["input_ids"]
    assert (
        ids
        == tokenizer("It is a truth universally acknowledged", add_special_tokens=False)[
            "input_ids"
        ]
    )
    assert not set(ids) & {0, 1, 2, 3}


@pytest.mark.parametrize(
    "text", ["Mr. Darcy paid £10,000 a year.", "naïve café — 日本語 🙂", "  spaces\n\ttabs  "]
)
def test_any_text_round_trips_through_encode_and_decode(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == unicodedata.normalize("NFC", text)


def test_nfc_normalizer_makes_decomposed_and_composed_text_equal(tokenizer):
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert tokenizer(composed)["input_ids"] == tokenizer(decomposed)["input_ids"]


def test_add_bos_and_eos_tokens_when_asked(corpus_texts):
    tokenizer = train_tokenizer(
        corpus_texts[:2], vocab_size=300, add_bos_token=True, add_eos_token=True
    )
    ids = tokenizer("Emma")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer("Emma", add_special_tokens=False)["input_ids"] == ids[1:-1]


def test_custom_and_extra_special_tokens(corpus_texts):
    tokenizer = train_tokenizer(
        corpus_texts[:2], vocab_size=300, special_tokens=["[P]", "[B]", "[E]", "[U]", "[SEP]"]
    )
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.convert_tokens_to_ids("[SEP]") == 4
    assert tokenizer("a [SEP] b", add_special_tokens=False)["input_ids"].count(4) == 1


def test_too_small_vocab_and_too_few_special_tokens_are_errors():
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["abc"], vocab_size=100)
    with pytest.raises(ValueError, match="special_tokens"):
        train_tokenizer(["abc"], vocab_size=300, special_tokens=["<p>", "<b>"])


def test_saved_tokenizer_loads_back_identically(tokenizer, tmp_path):
    tokenizer.save_pretrained(str(tmp_path / "tok"))
    loaded = tok_module.load_tokenizer(tmp_path / "tok")
    text = "She was the youngest of the two daughters."
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.eos_token_id == tokenizer.eos_token_id and loaded.pad_token == "<|PAD|>"


# ---- caching ---------------------------------------------------------------------------------


CONFIG = {"name": "austen", "vocab_size": 300}


def test_load_or_train_caches_under_name_and_digest_and_reuses_it(
    corpus_texts, tmp_path, monkeypatch
):
    first = load_or_train_tokenizer(CONFIG, corpus_texts[:3], tmp_path)
    directory = tmp_path / first.forgather_cache_dir.split("/")[-1]
    assert first.forgather_trained
    assert directory.name.startswith("austen-") and len(directory.name) == len("austen-") + 12
    marker = directory / tok_module.MARKER
    stamp = (marker.stat().st_mtime_ns, (directory / "tokenizer.json").stat().st_mtime_ns)
    assert json.loads(marker.read_text())["config"]["vocab_size"] == 300

    def no_training(*args, **kwargs):
        raise AssertionError("the cached tokenizer must be reused, not retrained")

    monkeypatch.setattr(tok_module, "train_tokenizer", no_training)
    second = load_or_train_tokenizer(CONFIG, corpus_texts[:3], tmp_path)
    assert not second.forgather_trained
    assert second.forgather_cache_dir == first.forgather_cache_dir
    assert (marker.stat().st_mtime_ns, (directory / "tokenizer.json").stat().st_mtime_ns) == stamp
    assert second("Elinor")["input_ids"] == first("Elinor")["input_ids"]
    assert [p.name for p in tmp_path.iterdir()] == [directory.name]


def test_different_config_or_data_gets_a_different_cache_directory(corpus_texts, tmp_path):
    base = load_or_train_tokenizer(CONFIG, corpus_texts[:2], tmp_path).forgather_cache_dir
    other_config = load_or_train_tokenizer(
        {**CONFIG, "vocab_size": 320}, corpus_texts[:2], tmp_path
    )
    other_data = load_or_train_tokenizer(CONFIG, corpus_texts[1:3], tmp_path)
    assert len({base, other_config.forgather_cache_dir, other_data.forgather_cache_dir}) == 3
    assert len(other_config) == 320


def test_load_or_train_accepts_a_path_and_a_dataset(tmp_path, corpus_texts):
    from datasets import Dataset

    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus_texts[:2]))
    config = {**CONFIG, "max_docs": 2}
    from_path = load_or_train_tokenizer(config, str(path), tmp_path / "cache")
    from_dataset = load_or_train_tokenizer(
        config, Dataset.from_dict({"text": corpus_texts[:4]}), tmp_path / "cache"
    )
    # Same training texts (max_docs=2), same config: the same cached tokenizer.
    assert from_dataset.forgather_cache_dir == from_path.forgather_cache_dir
    assert not from_dataset.forgather_trained


def test_unknown_config_key_and_empty_data_are_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown tokenizer config key"):
        load_or_train_tokenizer({"vocab": 300}, ["x"], tmp_path)
    with pytest.raises(DatasetError, match="empty"):
        load_or_train_tokenizer(CONFIG, [], tmp_path)
