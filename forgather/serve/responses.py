"""OpenAI response bodies: whole completions, streamed chunks, log-probabilities, errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from forgather.serve.engine import TokenInfo


def dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def sse(data: dict[str, Any]) -> str:
    """One server-sent event carrying ``data`` as JSON."""
    return f"data: {dumps(data)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def error_body(
    message: str,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass
class Choice:
    """What one choice has produced so far."""

    text: str = ""
    tokens: list[TokenInfo] = field(default_factory=list)
    finish_reason: str | None = None


class Formatter:
    """Builds the bodies of one request (completion or chat) for one model."""

    def __init__(
        self,
        request_id: str,
        created: int,
        model: str,
        chat: bool,
        token_text: Callable[[int], str],
        logprobs: bool,
    ):
        self.id = request_id
        self.created = created
        self.model = model
        self.chat = chat
        self.token_text = token_text
        self.logprobs = logprobs
        kind = "chat.completion.chunk" if chat else "text_completion"
        # Every chunk starts the same way: rendered once, then only the choice is encoded per token.
        self._chunk_head = (
            f'data: {{"id":{dumps(request_id)},"object":"{kind}","created":{created},'
            f'"model":{dumps(model)},'
        )

    # ------------------------------------------------------------ log-probabilities

    def completion_logprobs(self, tokens: list[TokenInfo], offset: int) -> dict[str, Any]:
        text = self.token_text
        return {
            "tokens": [text(t.token_id) for t in tokens],
            "token_logprobs": [t.logprobs.logprob for t in tokens],
            "top_logprobs": [{text(i): lp for i, lp in t.logprobs.top} for t in tokens],
            "text_offset": [offset + t.text_offset for t in tokens],
        }

    def chat_logprobs(self, tokens: list[TokenInfo]) -> dict[str, Any]:
        def entry(token: int, logprob: float) -> dict[str, Any]:
            text = self.token_text(token)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

        content = [
            {
                **entry(t.token_id, t.logprobs.logprob),
                "top_logprobs": [entry(i, lp) for i, lp in t.logprobs.top],
            }
            for t in tokens
        ]
        return {"content": content, "refusal": None}

    # ------------------------------------------------------------ whole responses

    def response(self, choices: list[Choice], usage: dict[str, int]) -> dict[str, Any]:
        items = []
        for index, choice in enumerate(choices):
            if self.chat:
                items.append(
                    {
                        "index": index,
                        "message": {"role": "assistant", "content": choice.text},
                        "logprobs": self.chat_logprobs(choice.tokens) if self.logprobs else None,
                        "finish_reason": choice.finish_reason,
                    }
                )
            else:
                items.append(
                    {
                        "index": index,
                        "text": choice.text,
                        "logprobs": self.completion_logprobs(choice.tokens, 0)
                        if self.logprobs
                        else None,
                        "finish_reason": choice.finish_reason,
                    }
                )
        return {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": items,
            "usage": usage,
        }

    # ------------------------------------------------------------ streamed chunks

    def chunk(
        self,
        index: int,
        text: str | None,
        tokens: list[TokenInfo],
        finish_reason: str | None,
        offset: int,
        with_usage: bool,
        role: bool = False,
    ) -> str:
        """One event with one choice's new text (``role``: the chat stream's opening delta)."""
        if self.chat:
            delta = (
                '{"role":"assistant","content":""}'
                if role
                else (f'{{"content":{dumps(text)}}}' if text else "{}")
            )
            logprobs = dumps(self.chat_logprobs(tokens)) if self.logprobs and tokens else "null"
            choice = f'{{"index":{index},"delta":{delta},"logprobs":{logprobs}'
        else:
            logprobs = (
                dumps(self.completion_logprobs(tokens, offset))
                if self.logprobs and tokens
                else "null"
            )
            choice = f'{{"index":{index},"text":{dumps(text or "")},"logprobs":{logprobs}'
        reason = dumps(finish_reason)
        usage = '"usage":null,' if with_usage else ""
        return f'{self._chunk_head}{usage}"choices":[{choice},"finish_reason":{reason}}}]}}\n\n'

    def usage_chunk(self, usage: dict[str, int]) -> str:
        return f'{self._chunk_head}"choices":[],"usage":{dumps(usage)}}}\n\n'
