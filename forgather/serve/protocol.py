"""The OpenAI request bodies the server accepts, checked by pydantic, and their sampling parameters.

Unknown fields are refused (as OpenAI's API does) so a typo never goes unnoticed; fields OpenAI
defines that this server does not implement are refused with a message when they ask for something
other than their default, and accepted when they do not.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from forgather.serve.sampling import SamplingParams

COMPLETIONS_DEFAULT_MAX_TOKENS = 16
MAX_LOGPROBS = 20


class UnsupportedField(ValueError):
    """A request asks for something this server does not do (answered with 400, naming the field)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class SamplingFields(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: int | None = Field(default=None, ge=-1)
    n: int = Field(default=1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 16:
            raise ValueError("at most 16 stop strings")
        return value

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling(
        self, max_tokens: int, logprobs: int | None, vocab_size: int, extra_stops: tuple[str, ...]
    ) -> SamplingParams:
        """The engine's parameters for this request (``max_tokens`` already decided)."""
        bias: dict[int, float] = {}
        for key, value in (self.logit_bias or {}).items():
            try:
                token = int(key)
            except ValueError:
                raise UnsupportedField(
                    "logit_bias", f"logit_bias keys must be token ids, got {key!r}"
                ) from None
            if not 0 <= token < vocab_size:
                raise UnsupportedField(
                    "logit_bias",
                    f"logit_bias token {token} is outside the vocabulary (0-{vocab_size - 1})",
                )
            bias[token] = value
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=max(0, self.top_k or 0),
            seed=None if self.seed is None else self.seed % (2**63 - 1024),
            stop=self.stop_strings() + extra_stops,
            logprobs=logprobs,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            logit_bias=bias,
            n=self.n,
        )


class CompletionRequest(SamplingFields):
    """``POST /v1/completions``."""

    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    best_of: int | None = Field(default=None, ge=1)
    suffix: str | None = None

    def check_supported(self) -> None:
        if self.suffix:
            raise UnsupportedField("suffix", "suffix (insertion) is not supported by this server")
        if self.best_of is not None and self.best_of != self.n:
            raise UnsupportedField(
                "best_of", "best_of other than n is not supported by this server"
            )
        if self.echo and self.logprobs is not None:
            raise UnsupportedField(
                "echo", "echo together with logprobs is not supported by this server"
            )
        if isinstance(self.prompt, list) and not self.prompt:
            raise UnsupportedField("prompt", "prompt is an empty list")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str


class ChatCompletionRequest(SamplingFields):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None

    def check_supported(self) -> None:
        if self.tools:
            raise UnsupportedField(
                "tools", "tools (function calling) are not supported by this server"
            )
        if self.tool_choice not in (None, "none", "auto"):
            raise UnsupportedField("tool_choice", "tool_choice is not supported by this server")
        if self.response_format is not None and self.response_format.type != "text":
            raise UnsupportedField(
                "response_format",
                f"response_format {self.response_format.type!r} is not supported (only 'text')",
            )
        if self.top_logprobs is not None and not self.logprobs:
            raise UnsupportedField("top_logprobs", "top_logprobs needs logprobs: true")

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def logprob_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]
