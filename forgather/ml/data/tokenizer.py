"""Byte-level BPE tokenizers trained with `tokenizers`, returned as HF fast tokenizers, cached by digest.

`train_tokenizer(texts, vocab_size=4096)` trains one: NFC normalization, byte-level pre-tokenizer
(no prefix space) and decoder, so every string round-trips through encode/decode and there are no
unknown tokens. The special tokens are, in this order, pad, BOS, EOS and UNK (ids 0-3 with the
defaults); more may follow as additional special tokens. Encoding adds no special token unless
`add_bos_token=True` / `add_eos_token=True` is asked for.

`load_or_train_tokenizer(config, dataset_or_path, cache_dir)` trains once per (config, data) and
reuses `<cache_dir>/<name>-<digest>/` after that.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from forgather.ml.data.errors import DatasetError

DEFAULT_SPECIAL_TOKENS = ("<|PAD|>", "<|BOS|>", "<|EOS|>", "<|UNK|>")
MARKER = "forgather_tokenizer.json"
"""Written last into a cached tokenizer directory: the config and data identity it was trained from."""

CONFIG_DEFAULTS: dict[str, Any] = {
    "name": "bpe",
    "vocab_size": 4096,
    "special_tokens": list(DEFAULT_SPECIAL_TOKENS),
    "model_max_length": 2048,
    "min_frequency": 2,
    "add_bos_token": False,
    "add_eos_token": False,
    "text_field": "text",
    "split": "train",
    "max_docs": None,
}
"""Keys of a `load_or_train_tokenizer` config and their defaults."""


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 4096,
    special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS,
    model_max_length: int = 2048,
    min_frequency: int = 2,
    add_bos_token: bool = False,
    add_eos_token: bool = False,
) -> Any:
    """Train a byte-level BPE tokenizer on `texts`; returns a `transformers.PreTrainedTokenizerFast`.

    `special_tokens` are pad, BOS, EOS, UNK in that order (more are additional special tokens); they
    get the first ids. `vocab_size` includes them and the 256 byte tokens.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    special = list(special_tokens)
    if len(special) < 4 or len(set(special)) != len(special):
        raise ValueError(
            "special_tokens: give four distinct tokens (pad, BOS, EOS, UNK), then any extra ones"
        )
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(special) + 1:
        raise ValueError(
            f"vocab_size {vocab_size} is too small: the byte alphabet and special tokens need "
            f"{len(alphabet) + len(special)}"
        )
    pad, bos, eos, unk = special[:4]
    tokenizer = Tokenizer(models.BPE(unk_token=unk))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(iter(texts), trainer=trainer)
    if add_bos_token or add_eos_token:
        single = " ".join([bos] * add_bos_token + ["$A"] + [eos] * add_eos_token)
        pair = " ".join([bos] * add_bos_token + ["$A"] + [eos] * add_eos_token + ["$B:1"])
        used = [bos] * add_bos_token + [eos] * add_eos_token
        tokenizer.post_processor = processors.TemplateProcessing(
            single=single,
            pair=pair,
            special_tokens=[(t, tokenizer.token_to_id(t)) for t in dict.fromkeys(used)],
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=pad,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        additional_special_tokens=special[4:],
        model_max_length=model_max_length,
        add_bos_token=add_bos_token,
        add_eos_token=add_eos_token,
        clean_up_tokenization_spaces=False,
    )


# ---- cached training ------------------------------------------------------------------------


def full_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """`config` with defaults filled in; unknown keys are an error."""
    config = dict(config or {})
    unknown = sorted(set(config) - set(CONFIG_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown tokenizer config key(s): {', '.join(unknown)} (known: {', '.join(CONFIG_DEFAULTS)})"
        )
    merged = {**CONFIG_DEFAULTS, **config}
    merged["special_tokens"] = list(merged["special_tokens"])
    return merged


def training_texts(dataset_or_path: Any, config: dict[str, Any]) -> Iterable[str]:
    """The texts to train on: a dataset's text field, a path loaded with `load_text_dataset`, or strings."""
    from forgather.ml.data.corpus import iter_texts, load_text_dataset

    data = dataset_or_path
    if isinstance(data, str | os.PathLike):
        data = load_text_dataset(data, config["split"], text_field=config["text_field"])
    elif (
        hasattr(data, "keys")
        and hasattr(data, "column_names")
        and isinstance(data.column_names, dict)
    ):
        if config["split"] not in data:
            raise DatasetError(f"tokenizer data has no split {config['split']!r}")
        data = data[config["split"]]
    return list(iter_texts(data, config["text_field"], config["max_docs"]))


def data_identity(texts: Iterable[str]) -> str:
    """SHA-256 over the training texts (each length-prefixed), i.e. exactly what the tokenizer sees."""
    digest = hashlib.sha256()
    for text in texts:
        raw = text.encode("utf-8")
        digest.update(len(raw).to_bytes(8, "little"))
        digest.update(raw)
    return digest.hexdigest()


def cache_key(config: dict[str, Any], identity: str) -> str:
    """`<name>-<sha256(config + data identity)[:12]>`."""
    settings = {k: v for k, v in config.items() if k != "name"}
    text = json.dumps({"config": settings, "data": identity}, sort_keys=True)
    return f"{config['name']}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def is_cached(directory: Path) -> bool:
    return (directory / MARKER).is_file() and (directory / "tokenizer.json").is_file()


def load_tokenizer(directory: str | os.PathLike) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(directory))


def load_or_train_tokenizer(
    config: dict[str, Any] | None, dataset_or_path: Any, cache_dir: str | os.PathLike
) -> Any:
    """The tokenizer `config` describes, trained on `dataset_or_path` once and cached.

    `config` keys (all optional): `name` (directory prefix, default "bpe"), `vocab_size`,
    `special_tokens`, `model_max_length`, `min_frequency`, `add_bos_token`, `add_eos_token` (the
    arguments of `train_tokenizer`), `text_field` ("text"), `split` ("train": used when given a path
    or a DatasetDict) and `max_docs` (train on the first N documents only).

    `dataset_or_path` is a `datasets.Dataset` / `DatasetDict`, a path or hub name for
    `load_text_dataset`, or an iterable of strings. The tokenizer is saved (`save_pretrained`) to
    `<cache_dir>/<name>-<sha256(config + data identity)[:12]>/`, where the data identity is the
    SHA-256 of the training texts; when that directory exists it is loaded instead of training.
    The directory is written under a temporary name and renamed, so concurrent callers (e.g. several
    ranks) never see a half-written tokenizer. The returned tokenizer's `forgather_cache_dir` and
    `forgather_trained` attributes tell where it lives and whether this call trained it.
    """
    config = full_config(config)
    texts = training_texts(dataset_or_path, config)
    if not texts:
        raise DatasetError("tokenizer training data is empty")
    identity = data_identity(texts)
    directory = Path(cache_dir) / cache_key(config, identity)
    trained = False
    if not is_cached(directory):
        tokenizer = train_tokenizer(
            texts,
            vocab_size=config["vocab_size"],
            special_tokens=config["special_tokens"],
            model_max_length=config["model_max_length"],
            min_frequency=config["min_frequency"],
            add_bos_token=config["add_bos_token"],
            add_eos_token=config["add_eos_token"],
        )
        tmp = directory.with_name(f".tmp-{directory.name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer.save_pretrained(str(tmp))
        marker = {"config": config, "data_sha256": identity, "documents": len(texts)}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        try:
            tmp.rename(directory)
            trained = True
        except OSError:  # another process finished first: use its tokenizer
            shutil.rmtree(tmp, ignore_errors=True)
            if not is_cached(directory):
                raise
    tokenizer = load_tokenizer(directory)
    tokenizer.forgather_cache_dir = str(directory)
    tokenizer.forgather_trained = trained
    return tokenizer


__all__ = ["DEFAULT_SPECIAL_TOKENS", "load_or_train_tokenizer", "train_tokenizer"]
