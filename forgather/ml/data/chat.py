"""Conversations for instruction and chat fine-tuning: rows -> chat-template text -> token ids with
labels on the assistant's tokens only.

A row is a conversation in one of these shapes (JSON lines, or any `datasets` dataset):

* `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}` (OpenAI style);
* `{"prompt": "...", "response": "..."}`, optionally with `"system": "..."` (one exchange);
* `{"instruction": "...", "input": "...", "output": "..."}` (Alpaca style; `input` may be empty).

`chat_tokenize_fn` (for `Dataset.map(batched=True)`, or `token_stream(map_fn=...)`) renders each
conversation with the tokenizer's chat template (ChatML when it has none, `CHATML_TEMPLATE`) and
tokenizes it; the `labels` are the token ids on every assistant turn (its content and the template's
end-of-turn marker, so the model learns to stop) and `-100` on everything else (system, user, the
template's role headers). A turn's span is found by rendering the conversation up to it: the text an
assistant message adds after the prompt for it (`add_generation_prompt=True`); a template whose
renderings are not prefixes of each other is refused by name. Conversations are then packed like
documents (`packing.pack_documents`: greedy / first-fit / best-fit, `document_starts` per row) or
kept one per row, and their labels travel with their tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from forgather.ml.data.errors import DatasetError
from forgather.ml.data.packing import pack_documents

IGNORE_INDEX = -100

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML: `<|im_start|>ROLE\\nCONTENT<|im_end|>\\n` per message; the prompt ends `<|im_start|>assistant\\n`."""
CHATML_START = "<|im_start|>"
CHATML_END = "<|im_end|>"
CHATML_TOKENS = (CHATML_START, CHATML_END)
ROLES = ("system", "user", "assistant", "tool")


def own_chat_template(tokenizer: Any) -> str | None:
    """The tokenizer's own chat template, or None when it has none."""
    own = getattr(tokenizer, "chat_template", None)
    return own if isinstance(own, str) and own.strip() else None


def template_of(tokenizer: Any, chat_template: str | None = None) -> str:
    """`chat_template` if given, else the tokenizer's own, else ChatML."""
    return chat_template or own_chat_template(tokenizer) or CHATML_TEMPLATE


def conversation_messages(row: dict[str, Any], index: int | None = None) -> list[dict[str, str]]:
    """A row's conversation as a list of `{"role", "content"}` (see the module docs for the shapes)."""
    where = f"conversation {index}" if index is not None else "conversation"
    if row.get("messages") is not None:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise DatasetError(f"{where}: messages must be a non-empty list")
        out = []
        for number, message in enumerate(messages):
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise DatasetError(f"{where}: message {number} needs a role and a content")
            if message["role"] not in ROLES:
                raise DatasetError(
                    f"{where}: message {number} has role {message['role']!r} "
                    f"(one of {', '.join(ROLES)})"
                )
            out.append({"role": message["role"], "content": str(message["content"] or "")})
        return out
    if row.get("prompt") is not None and row.get("response") is not None:
        system = [{"role": "system", "content": row["system"]}] if row.get("system") else []
        return [
            *system,
            {"role": "user", "content": str(row["prompt"])},
            {"role": "assistant", "content": str(row["response"])},
        ]
    if row.get("instruction") is not None and row.get("output") is not None:
        prompt = str(row["instruction"])
        if row.get("input"):
            prompt = f"{prompt}\n\n{row['input']}"
        return [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": str(row["output"])},
        ]
    present = ", ".join(sorted(k for k, v in row.items() if v is not None)) or "none"
    raise DatasetError(
        f"{where}: expected messages, prompt + response, or instruction + output (columns: {present})"
    )


def _render(tokenizer: Any, messages: list[dict[str, str]], template: str, prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=prompt
    )


def assistant_spans(
    tokenizer: Any, messages: list[dict[str, str]], template: str
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns."""
    text = _render(tokenizer, messages, template, prompt=False)
    spans = []
    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:turn], template, prompt=True) if turn else ""
        through = _render(tokenizer, messages[: turn + 1], template, prompt=False)
        if not through.startswith(before) or not text.startswith(through):
            raise DatasetError(
                "the chat template does not render a conversation as a prefix of its continuation, "
                "so the assistant's tokens cannot be found: use a prefix-stable template "
                "(chat_template=...; ChatML is one)"
            )
        spans.append((len(before), len(through)))
    return text, spans


def tokenize_conversation(
    tokenizer: Any,
    messages: list[dict[str, str]],
    template: str,
    add_bos: bool = False,
) -> tuple[list[int], list[int]]:
    """`(input_ids, labels)` of one conversation: labels on assistant tokens only.

    The text is tokenized as `forgather serve` and `generate --chat` tokenize prompts: without
    added special tokens (a template that wants BOS writes `bos_token`); `add_bos` prepends one.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise DatasetError("chat_tokenize_fn needs a fast tokenizer (its character offsets)")
    text, spans = assistant_spans(tokenizer, messages, template)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, labels = list(encoded["input_ids"]), []
    for token, (start, end) in zip(ids, encoded["offset_mapping"], strict=True):
        inside = any(start >= lo and end <= hi and end > start for lo, hi in spans)
        labels.append(token if inside else IGNORE_INDEX)
    bos = getattr(tokenizer, "bos_token_id", None)
    if add_bos and bos is not None and (not ids or ids[0] != bos):
        ids, labels = [bos, *ids], [IGNORE_INDEX, *labels]
    return ids, labels


def chat_tokenize_fn(
    features: dict[str, list],
    tokenizer: Any,
    max_length: int = 512,
    packed: bool = False,
    packing_strategy: str = "best_fit",
    overflow: bool = False,
    chat_template: str | None = None,
    add_bos: bool = False,
    min_assistant_tokens: int = 1,
) -> dict[str, list[list[int]]]:
    """Tokenize a batch of conversations into rows of `input_ids`, `labels`, `document_starts`.

    `packed`: several conversations per row of at most `max_length` tokens (`packing_strategy`
    greedy, first_fit or best_fit), else one per row. `overflow=False` (the default) cuts a
    conversation longer than `max_length` at `max_length`; `True` continues it in further rows.
    Rows without at least `min_assistant_tokens` labelled tokens (say, a conversation cut before
    its answer) are dropped.
    """
    template = template_of(tokenizer, chat_template)
    columns = list(features)
    count = len(features[columns[0]]) if columns else 0
    table_ids: list[int] = []
    table_labels: list[int] = []
    positions: list[list[int]] = []
    for index in range(count):
        row = {name: features[name][index] for name in columns}
        ids, labels = tokenize_conversation(
            tokenizer, conversation_messages(row, index), template, add_bos
        )
        # Packing copies its tokens without reading them: pack positions in a table of
        # (id, label) pairs, and the labels travel with their tokens.
        positions.append(list(range(len(table_ids), len(table_ids) + len(ids))))
        table_ids += ids
        table_labels += labels
    blocks = pack_documents(
        positions,
        max_length=max_length,
        overflow=overflow,
        packed=packed,
        packing_strategy=packing_strategy if packed else "greedy",
    )
    out: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "document_starts": []}
    for block, starts in blocks:
        labels = [table_labels[p] for p in block]
        if sum(label != IGNORE_INDEX for label in labels) < min_assistant_tokens:
            continue
        out["input_ids"].append([table_ids[p] for p in block])
        out["labels"].append(labels)
        out["document_starts"].append(starts)
    return out


def chat_tokenizer(
    tokenizer: Any, chat_template: str | None = None, tokens: Sequence[str] = CHATML_TOKENS
) -> Any:
    """`tokenizer` made ready for chat: the ChatML markers (`tokens`) added as special tokens when
    missing (never split; a model needs rows for them, `models.vocab.model_with_vocab`), and
    `chat_template` (default: its own, else ChatML) set so the saved tokenizer carries it."""
    missing = [t for t in tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    tokenizer.chat_template = template_of(tokenizer, chat_template)
    return tokenizer


__all__ = [
    "CHATML_END",
    "CHATML_TEMPLATE",
    "CHATML_TOKENS",
    "IGNORE_INDEX",
    "chat_tokenize_fn",
    "chat_tokenizer",
    "conversation_messages",
    "own_chat_template",
    "template_of",
    "tokenize_conversation",
]
