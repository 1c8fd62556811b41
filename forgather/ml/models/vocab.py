"""`forgather update-vocab SRC DST --add-tokens FILE.yaml`: add tokens to a model and its
tokenizer — new special tokens (ChatML markers, a PAD), ordinary tokens, the tokenizer's named
special tokens and the ids that end generation — resizing the embedding and the head and
initialising the new rows by a documented rule.

The file (YAML, every key optional)::

    special_tokens: ["<|im_start|>", "<|im_end|>"]   # never split, skipped when decoding
    tokens: ["Knightley"]                             # ordinary added tokens
    pad_token: "<|pad|>"                              # also bos_token, eos_token, unk_token
    eos_token: "<|im_end|>"
    generation_eos: ["<|im_end|>", "</s>"]            # generation_config.eos_token_id (all stop)
    init: mean                                        # new rows: mean (of the old rows) or zero
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from forgather.errors import ForgatherError

NAMED_TOKENS = ("pad_token", "bos_token", "eos_token", "unk_token")
KEYS = ("special_tokens", "tokens", *NAMED_TOKENS, "generation_eos", "init")
INITS = ("mean", "zero")


class VocabError(ForgatherError):
    """The add-tokens file or the model cannot be used as asked."""


@dataclass
class VocabSpec:
    special_tokens: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    named: dict[str, str] = field(default_factory=dict)
    generation_eos: list[str] = field(default_factory=list)
    init: str = "mean"


@dataclass
class VocabUpdate:
    destination: Path
    added: dict[str, int]  # token -> id, for every token new to the tokenizer
    vocab_size: int  # rows of the embedding afterwards
    init: str


def read_spec(path: str | Path) -> VocabSpec:
    """The add-tokens file; a bad key or value is one error naming the file, line and key."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        root = yaml.compose(text)
    except OSError as error:
        raise VocabError(f"--add-tokens {path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise VocabError(f"{path}{where}: not YAML ({getattr(error, 'problem', error)})") from None
    if root is None:
        raise VocabError(f"{path}: empty; name the tokens to add (keys: {', '.join(KEYS)})")
    if not isinstance(root, yaml.MappingNode):
        raise VocabError(
            f"{path}:{root.start_mark.line + 1}: expected a mapping of {', '.join(KEYS)}"
        )
    spec = VocabSpec()
    for key_node, value_node in root.value:
        key, line = key_node.value, key_node.start_mark.line + 1
        where = f"{path}:{line}: {key}"
        if key not in KEYS:
            raise VocabError(f"{where}: unknown key (known: {', '.join(KEYS)})")
        value = yaml.safe_load(yaml.serialize(value_node))
        if key in ("special_tokens", "tokens", "generation_eos"):
            if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
                raise VocabError(f"{where}: must be a list of non-empty strings")
            setattr(spec, key, value)
        elif key == "init":
            if value not in INITS:
                raise VocabError(f"{where}: must be one of {', '.join(INITS)}, got {value!r}")
            spec.init = value
        else:
            if not isinstance(value, str) or not value:
                raise VocabError(f"{where}: must be a non-empty string")
            spec.named[key] = value
    return spec


def update_vocab(
    src: str | Path,
    dst: str | Path,
    add_tokens: str | Path,
    checkpoint: str | None = None,
    init: str | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> VocabUpdate:
    """Add the tokens of `add_tokens` to the model at `src` and write the result to `dst`."""
    from forgather.ml.models.loading import load_causal_lm, model_source, saved_dtype_name
    from forgather.ml.models.save import check_new_model_dir, write_new_model_dir

    spec = read_spec(add_tokens)
    if init is not None:
        if init not in INITS:
            raise VocabError(f"--init must be one of {', '.join(INITS)}, got {init!r}")
        spec.init = init
    dst = check_new_model_dir(dst)
    path = model_source(src, checkpoint)
    model, tokenizer, model_dir = load_causal_lm(path, "cpu", "float32", require_tokenizer=False)
    if tokenizer is None:
        raise VocabError(f"{path} has no tokenizer to add tokens to")
    before = set(tokenizer.get_vocab())
    if spec.special_tokens:
        tokenizer.add_tokens(spec.special_tokens, special_tokens=True)
    if spec.tokens:
        tokenizer.add_tokens(spec.tokens)
    if spec.named:
        tokenizer.add_special_tokens(dict(spec.named))
    vocab = tokenizer.get_vocab()
    added = dict(sorted(((t, i) for t, i in vocab.items() if t not in before), key=lambda x: x[1]))
    _grow_embeddings(model, len(tokenizer), sorted(added.values()), spec.init)
    _update_token_ids(model, tokenizer, spec, add_tokens)
    model = model.to(getattr(torch, saved_dtype_name(model_dir)))
    write_new_model_dir(model, dst, tokenizer)
    rows = model.get_input_embeddings().weight.shape[0]
    listed = ", ".join(f"{t} {i}" for t, i in added.items()) or "none"
    say(f"added {len(added)} token(s) ({listed}); {rows} embedding rows, new rows: {spec.init}")
    say(f"wrote {dst}")
    return VocabUpdate(dst, added, rows, spec.init)


def _grow_embeddings(model: Any, size: int, new_ids: list[int], init: str) -> None:
    """Rows for ids up to `size` (more rows if needed), the rows of `new_ids` set by `init` in the
    input embedding and (when untied) the output head."""
    embedding = model.get_input_embeddings()
    if not isinstance(embedding, torch.nn.Embedding):
        raise VocabError(
            f"the model's input encoder is a {type(embedding).__name__}, not an nn.Embedding: "
            "adding tokens resizes only nn.Embedding rows (input_encoder in config.json)"
        )
    old_rows = embedding.weight.shape[0]
    if size > old_rows:
        model.resize_token_embeddings(size, mean_resizing=False)
    fresh = set(new_ids)
    known = [i for i in range(min(old_rows, size)) if i not in fresh]
    # rows indexed by token id: the embedding, and an untied head's weight and bias
    tables = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not tables[0]:
        tables.append(head.weight)
        if getattr(head, "bias", None) is not None:
            tables.append(head.bias)
    with torch.no_grad():
        for table in tables:
            table[new_ids] = table[known].mean(0) if init == "mean" else 0.0


def _update_token_ids(model: Any, tokenizer: Any, spec: VocabSpec, source: str | Path) -> None:
    """The config's and generation config's pad/bos/eos ids follow the tokenizer; `generation_eos`
    sets every id that ends generation."""
    vocab = tokenizer.get_vocab()
    for name in NAMED_TOKENS[:3]:
        if name in spec.named:
            token_id = vocab[spec.named[name]]
            setattr(model.config, f"{name}_id", token_id)
            if model.generation_config is not None:
                setattr(model.generation_config, f"{name}_id", token_id)
    if spec.generation_eos:
        missing = [t for t in spec.generation_eos if t not in vocab]
        if missing:
            raise VocabError(
                f"{source}: generation_eos: {', '.join(missing)} not in the vocabulary (add them "
                "under special_tokens)"
            )
        ids = [vocab[t] for t in spec.generation_eos]
        model.generation_config.eos_token_id = ids if len(ids) > 1 else ids[0]


def model_with_vocab(
    model: Any,
    tokenizer: Any,
    generation_eos: list[str] | tuple[str, ...] = (),
    init: str = "mean",
) -> Any:
    """`model` (a module, or a callable returning one: a config's model partial) with embedding
    rows for every id of `tokenizer`: tokens added to the tokenizer after the model was trained
    (`data.chat.chat_tokenizer` adds the ChatML markers) get new rows set by `init` (as
    `forgather update-vocab`). `generation_eos` tokens join the ids that end generation, beside
    the model's own EOS. For configs: `model: !partial:forgather.ml.models.vocab:model_with_vocab`.
    """
    if init not in INITS:
        raise VocabError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    if callable(model) and not isinstance(model, torch.nn.Module):
        model = model()
    rows = model.get_input_embeddings().weight.shape[0]
    size = len(tokenizer)
    if size > rows:
        _grow_embeddings(model, size, list(range(rows, size)), init)
    if generation_eos:
        vocab = tokenizer.get_vocab()
        missing = [t for t in generation_eos if t not in vocab]
        if missing:
            raise VocabError(
                f"generation_eos: {', '.join(missing)} not in the tokenizer's vocabulary"
            )
        own = model.generation_config.eos_token_id
        ids = [own] if isinstance(own, int) else list(own or [])
        ids += [vocab[t] for t in generation_eos if vocab[t] not in ids]
        model.generation_config.eos_token_id = ids if len(ids) > 1 else ids[0]
    return model


__all__ = [
    "VocabError",
    "VocabSpec",
    "VocabUpdate",
    "model_with_vocab",
    "read_spec",
    "update_vocab",
]
