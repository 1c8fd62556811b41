"""Helpers for the callback tests: training args, states and a tiny tokenizer/model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from forgather.ml.train.state import TrainerControl, TrainerState


def make_args(tmp_path: Path, **extra) -> SimpleNamespace:
    values = {
        "output_dir": str(tmp_path / "out"),
        "logging_dir": str(tmp_path / "out" / "runs" / "r1"),
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 2,
    }
    values.update(extra)
    return SimpleNamespace(**values)


def make_state(**extra) -> TrainerState:
    values = {"max_steps": 1000, "world_size": 1, "train_batch_size": 4, "effective_batch_size": 8}
    values.update(extra)
    return TrainerState(**values)


@pytest.fixture
def args(tmp_path):
    return make_args(tmp_path)


@pytest.fixture
def state():
    return make_state()


@pytest.fixture
def control():
    return TrainerControl()


@pytest.fixture
def jobs_dir(tmp_path, monkeypatch) -> Path:
    """Discovery files go to a private directory for the test."""
    directory = tmp_path / "jobs"
    monkeypatch.setenv("FORGATHER_JOBS_DIR", str(directory))
    return directory


CORPUS = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "a cat and a dog met on the mat",
] * 5


@pytest.fixture(scope="session")
def tokenizer():
    """A tiny byte-level BPE fast tokenizer trained in memory (no downloads)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


def tiny_llama_config(vocab_size: int = 300, **extra):
    from transformers import LlamaConfig

    values = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    values.update(extra)
    return LlamaConfig(**values)
