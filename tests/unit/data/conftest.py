"""Shared fixtures: a slice of the embedded corpus and a small tokenizer trained on it."""

from __future__ import annotations

import gzip
import json

import pytest

from forgather.ml.data.corpus import EMBEDDED_CORPUS_DIR


@pytest.fixture(autouse=True, scope="session")
def _quiet_datasets():
    import datasets

    datasets.disable_progress_bars()
    yield


@pytest.fixture(scope="session")
def corpus_texts() -> list[str]:
    """The first 12 chapters of the embedded train split (read directly, without `datasets`)."""
    texts = []
    with gzip.open(EMBEDDED_CORPUS_DIR / "train.jsonl.gz", "rt", encoding="utf-8") as lines:
        for line in lines:
            texts.append(json.loads(line)["text"])
            if len(texts) == 12:
                break
    return texts


@pytest.fixture(scope="session")
def paragraphs(corpus_texts) -> list[str]:
    """Paragraphs of the corpus slice: short documents of varied length."""
    return [p for text in corpus_texts[:3] for p in text.split("\n\n")]


@pytest.fixture(scope="session")
def tokenizer(corpus_texts):
    """A 512-token byte-level BPE tokenizer trained on the corpus slice."""
    from forgather.ml.data.tokenizer import train_tokenizer

    return train_tokenizer(corpus_texts, vocab_size=512)
