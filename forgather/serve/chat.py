"""Chat prompts: messages rendered with the tokenizer's chat template, ``--chat-template``, or ChatML.

ChatML is the fallback for tokenizers without a template (forgather's pre-trained models have none):
each message becomes ``<|im_start|>ROLE\\nCONTENT<|im_end|>\\n`` and the prompt ends with
``<|im_start|>assistant\\n``; ``<|im_end|>`` then also stops generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgather.errors import ForgatherError
from forgather.ml.data.chat import CHATML_END, CHATML_TEMPLATE, own_chat_template


@dataclass(frozen=True)
class ChatFormat:
    """The template a server renders chats with, where it came from, and stops it implies."""

    template: str
    source: str
    stops: tuple[str, ...] = ()


def chat_format(tokenizer: Any, template_file: str | Path | None = None) -> ChatFormat:
    """``--chat-template FILE`` if given, else the tokenizer's own template, else ChatML."""
    if template_file:
        path = Path(template_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise ForgatherError(f"--chat-template {path}: {error.strerror or error}") from None
        if not text.strip():
            raise ForgatherError(f"--chat-template {path}: the file is empty")
        return ChatFormat(text, str(path))
    own = own_chat_template(tokenizer)
    if own is not None:
        return ChatFormat(own, "the tokenizer's chat template")
    return ChatFormat(CHATML_TEMPLATE, "ChatML (the tokenizer has no chat template)", (CHATML_END,))


def render_chat(tokenizer: Any, fmt: ChatFormat, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of ``messages`` rendered with ``fmt``, ending with the assistant's turn."""
    text = tokenizer.apply_chat_template(
        messages, chat_template=fmt.template, tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]
