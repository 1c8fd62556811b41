"""The HTTP side of ``forgather serve``: an OpenAI-compatible FastAPI app in front of the engine.

``GET /health`` (no key needed), ``GET /v1/models``, ``POST /v1/completions`` and
``POST /v1/chat/completions``, streamed as server-sent events or not. Every error is an OpenAI-style
JSON body (``{"error": {"message", "type", "param", "code"}}``) with status 400, 401, 404 or 500. The
event loop never runs the model: prompts are tokenized in a worker thread, generation runs in the
engine process, and its results arrive in the loop as each request's deltas.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from forgather.serve.chat import ChatFormat, render_chat
from forgather.serve.engine import Delta, EngineError
from forgather.serve.protocol import (
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    ChatCompletionRequest,
    CompletionRequest,
    SamplingFields,
    UnsupportedField,
)
from forgather.serve.responses import SSE_DONE, Choice, Formatter, error_body, sse
from forgather.serve.worker import EngineProcess, PendingRequest

log = logging.getLogger("forgather.serve")

PROMPT_FORMS = "a string, a list of strings, a list of token ids, or a list of lists of token ids"


class APIError(Exception):
    """An error answered as OpenAI's JSON error body."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.kind, self.param, self.code)

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


@dataclass
class ServerSettings:
    """What the app needs besides the engine."""

    model_name: str
    model_dir: str
    chat: ChatFormat
    api_keys: tuple[str, ...] = ()
    log_prompts: bool = False
    created: int = field(default_factory=lambda: int(time.time()))


class EventStream(StreamingResponse):
    """Server-sent events that stop (and close their generator) as soon as the client goes away."""

    media_type = "text/event-stream"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        except OSError:
            pass
        finally:
            await self.body_iterator.aclose()


class Generation:
    """The engine requests behind one HTTP request (one per prompt), as one stream of deltas."""

    def __init__(
        self, engine: EngineProcess, request_id: str, prompts: list[list[int]], params: Any
    ):
        self.engine = engine
        self.id = request_id
        self.prompts = prompts
        self.params = params
        self.queue: asyncio.Queue[tuple[int, list[Delta]]] = asyncio.Queue()
        self.requests = [
            PendingRequest(
                f"{request_id}.{i}",
                prompt,
                params,
                lambda deltas, i=i: self.queue.put_nowait((i, deltas)),
            )
            for i, prompt in enumerate(prompts)
        ]
        self.open = len(prompts) * params.n
        self.started = time.monotonic()

    def submit(self) -> None:
        for request in self.requests:
            self.engine.submit(request)

    def cancel(self) -> None:
        for request in self.requests:
            if request.finished is None:
                self.engine.cancel(request)

    async def deltas(self) -> AsyncIterator[tuple[int, Delta]]:
        """``(choice index, delta)`` until every choice has finished."""
        n = self.params.n
        while self.open:
            prompt_index, deltas = await self.queue.get()
            for delta in deltas:
                if delta.error is not None:
                    raise APIError(500, delta.error, kind="server_error")
                if delta.finish_reason is not None:
                    self.open -= 1
                yield prompt_index * n + delta.index, delta

    def usage(self) -> dict[str, int]:
        prompt_tokens = sum(len(p) for p in self.prompts)
        completion = sum(r.completion_tokens for r in self.requests)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
        }

    def timings(self) -> str:
        firsts = [r.ttft for r in self.requests if r.ttft is not None]
        ttft = f"{min(firsts) * 1000:.1f}ms" if firsts else "-"
        return f"ttft={ttft} total={(time.monotonic() - self.started) * 1000:.1f}ms"


class Server:
    """The FastAPI app of one served model."""

    def __init__(
        self,
        engine: EngineProcess,
        tokenizer: Any,
        settings: ServerSettings,
        on_ready: Callable[[], None] = lambda: None,
    ):
        assert engine.info is not None, "start the engine (wait_ready) first"
        self.on_ready = on_ready
        self.engine = engine
        self.tokenizer = tokenizer
        self.settings = settings
        self.vocab_size = engine.info.vocab_size
        self._token_text: dict[int, str] = {}
        self.app = self._build()

    # ------------------------------------------------------------ request checks

    def token_text(self, token: int) -> str:
        text = self._token_text.get(token)
        if text is None:
            text = self.tokenizer.decode([token])
            self._token_text[token] = text
        return text

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.settings.model_name:
            raise APIError(
                404,
                f"The model `{name}` does not exist; this server serves "
                f"`{self.settings.model_name}`.",
                param="model",
                code="model_not_found",
            )

    def check_key(self, request: Request) -> None:
        keys = self.settings.api_keys
        if not keys:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise APIError(
                401,
                "Missing API key: send it as the header 'Authorization: Bearer KEY'.",
                code="invalid_api_key",
            )
        given_bytes = given.strip().encode()
        matched = False
        for key in keys:  # every key is compared, each in constant time
            matched |= hmac.compare_digest(given_bytes, key.encode())
        if not matched:
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")

    @staticmethod
    def check_supported(body: CompletionRequest | ChatCompletionRequest) -> None:
        try:
            body.check_supported()
        except UnsupportedField as error:
            raise APIError(400, str(error), param=error.param) from None

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer(text, verbose=False)["input_ids"]
        if not ids and self.tokenizer.bos_token_id is not None:
            ids = [self.tokenizer.bos_token_id]
        return ids

    def completion_prompts(self, body: CompletionRequest) -> list[list[int]]:
        prompt = body.prompt
        if isinstance(prompt, str):
            return [self.encode(prompt)]
        if all(isinstance(p, str) for p in prompt):
            return [self.encode(p) for p in prompt]
        prompts = [list(prompt)] if all(isinstance(p, int) for p in prompt) else prompt
        for ids in prompts:
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise APIError(
                    400,
                    f"prompt token {bad[0]} is outside the vocabulary (0-{self.vocab_size - 1})",
                    param="prompt",
                )
        return [list(ids) for ids in prompts]

    def max_tokens(
        self, requested: int | None, prompts: list[list[int]], default: int | None
    ) -> int:
        """``max_tokens`` as asked, else the default capped to the room the longest prompt leaves."""
        if requested is not None:
            return requested
        room = self.engine.max_model_len - max(len(p) for p in prompts)
        if room < 1:
            return 1  # the engine's check reports the prompt's length
        return room if default is None else min(default, room)

    def start(
        self,
        prefix: str,
        prompts: list[list[int]],
        body: SamplingFields,
        max_tokens: int,
        logprobs: int | None,
        chat: bool,
    ) -> Generation:
        """Check the request against the engine's limits and submit it."""
        extra_stops = self.settings.chat.stops if chat else ()
        try:
            params = body.sampling(max_tokens, logprobs, self.vocab_size, extra_stops)
            generation = Generation(
                self.engine, f"{prefix}-{uuid.uuid4().hex[:24]}", prompts, params
            )
            generation.submit()
        except UnsupportedField as error:
            raise APIError(400, str(error), param=error.param) from None
        except EngineError as error:
            param = "messages" if chat and error.param == "prompt" else error.param
            raise APIError(400, str(error), param=param, code=error.code) from None
        return generation

    def log_done(
        self,
        generation: Generation,
        kind: str,
        stream: bool,
        status: int,
        choices: list[Choice],
        prompt_text: str | None,
    ) -> None:
        usage = generation.usage()
        reasons = ",".join(sorted({c.finish_reason or "cancelled" for c in choices}))
        line = (
            f"{generation.id} {kind} {status} prompt={usage['prompt_tokens']} "
            f"completion={usage['completion_tokens']} n={generation.params.n} "
            f"{generation.timings()} stream={'yes' if stream else 'no'} finish={reasons}"
        )
        if prompt_text is not None:
            line += f" prompt_text={prompt_text!r}"
        log.info(line)

    # ------------------------------------------------------------ responses

    async def respond(
        self,
        http: Request,
        generation: Generation,
        body: CompletionRequest | ChatCompletionRequest,
        echo: list[str],
        prompt_text: str | None,
    ) -> Any:
        chat = isinstance(body, ChatCompletionRequest)
        formatter = Formatter(
            generation.id,
            int(time.time()),
            self.settings.model_name,
            chat,
            self.token_text,
            body.logprobs is not None and body.logprobs is not False,
        )
        n = generation.params.n
        choices = [Choice(text=echo[i // n] if echo else "") for i in range(generation.open)]
        if body.stream:
            stream = self._stream(generation, formatter, body.include_usage(), choices, prompt_text)
            return EventStream(stream)
        status = 200
        try:
            await self._collect(http, generation, choices)
        except APIError as error:
            status = error.status
            raise
        finally:
            if any(c.finish_reason is None for c in choices):
                generation.cancel()
            kind = "chat" if chat else "completion"
            self.log_done(generation, kind, False, status, choices, prompt_text)
        return JSONResponse(formatter.response(choices, generation.usage()))

    async def _collect(self, http: Request, generation: Generation, choices: list[Choice]) -> None:
        """Gather every delta; give up (and cancel) when the client disconnects."""
        deltas = generation.deltas().__aiter__()
        while True:
            try:
                index, delta = await asyncio.wait_for(deltas.__anext__(), timeout=1.0)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if await http.is_disconnected():
                    raise APIError(499, "the client disconnected") from None
                continue
            choice = choices[index]
            choice.text += delta.text
            choice.tokens += delta.logprobs
            if delta.finish_reason is not None:
                choice.finish_reason = delta.finish_reason

    async def _stream(
        self,
        generation: Generation,
        formatter: Formatter,
        with_usage: bool,
        choices: list[Choice],
        prompt_text: str | None,
    ) -> AsyncIterator[str]:
        status = 200
        try:
            for index, choice in enumerate(choices):
                if formatter.chat:
                    yield formatter.chunk(index, None, [], None, 0, with_usage, role=True)
                elif choice.text:  # echo
                    yield formatter.chunk(index, choice.text, [], None, 0, with_usage)
            async for index, delta in generation.deltas():
                choice = choices[index]
                if delta.finish_reason is not None:
                    choice.finish_reason = delta.finish_reason
                if delta.text or delta.logprobs or delta.finish_reason:
                    yield formatter.chunk(
                        index,
                        delta.text,
                        delta.logprobs,
                        delta.finish_reason,
                        len(choice.text),
                        with_usage,
                    )
                    choice.text += delta.text
            if with_usage:
                yield formatter.usage_chunk(generation.usage())
            yield SSE_DONE
        except APIError as error:
            status = error.status
            yield sse(error.body())
            yield SSE_DONE
        finally:
            if any(c.finish_reason is None for c in choices):
                generation.cancel()
                status = 499 if status == 200 else status
            kind = "chat" if formatter.chat else "completion"
            self.log_done(generation, kind, True, status, choices, prompt_text)

    # ------------------------------------------------------------ routes

    def _build(self) -> FastAPI:
        @contextlib.asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            self.engine.attach(asyncio.get_running_loop())
            self.on_ready()
            yield

        app = FastAPI(
            title="forgather serve",
            docs_url=None,
            redoc_url=None,
            openapi_url=None,
            lifespan=lifespan,
        )
        authorized = Depends(self.check_key)

        @app.exception_handler(APIError)
        async def api_error(request: Request, error: APIError) -> JSONResponse:
            level = logging.ERROR if error.status >= 500 else logging.WARNING
            log.log(
                level, "%s %s %d %s", request.method, request.url.path, error.status, error.message
            )
            return error.response()

        @app.exception_handler(RequestValidationError)
        async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
            return await api_error(request, validation_error(error))

        @app.exception_handler(StarletteHTTPException)
        async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
            message = f"{request.method} {request.url.path}: {error.detail}"
            kind = "invalid_request_error" if error.status_code < 500 else "server_error"
            return await api_error(request, APIError(error.status_code, message, kind=kind))

        @app.exception_handler(Exception)
        async def crashed(request: Request, error: Exception) -> JSONResponse:
            log.exception("%s %s failed", request.method, request.url.path)
            return APIError(500, f"internal error: {error}", kind="server_error").response()

        @app.get("/health")
        async def health() -> JSONResponse:
            alive = self.engine.alive
            body = {
                "status": "ok" if alive else "unavailable",
                "model": self.settings.model_name,
                **self.engine.load,
            }
            return JSONResponse(body, status_code=200 if alive else 503)

        @app.get("/v1/models", dependencies=[authorized])
        async def models() -> dict[str, Any]:
            return {
                "object": "list",
                "data": [
                    {
                        "id": self.settings.model_name,
                        "object": "model",
                        "created": self.settings.created,
                        "owned_by": "forgather",
                        "root": self.settings.model_dir,
                        "max_model_len": self.engine.max_model_len,
                    }
                ],
            }

        @app.post("/v1/completions", dependencies=[authorized])
        async def completions(http: Request, body: CompletionRequest) -> Any:
            self.check_model(body.model)
            self.check_supported(body)
            prompts = await asyncio.to_thread(self.completion_prompts, body)
            max_tokens = self.max_tokens(body.max_tokens, prompts, COMPLETIONS_DEFAULT_MAX_TOKENS)
            generation = self.start("cmpl", prompts, body, max_tokens, body.logprobs, chat=False)
            echo = (
                [self.tokenizer.decode(p, skip_special_tokens=True) for p in prompts]
                if body.echo
                else []
            )
            text = json.dumps(body.prompt) if self.settings.log_prompts else None
            return await self.respond(http, generation, body, echo, text)

        @app.post("/v1/chat/completions", dependencies=[authorized])
        async def chat_completions(http: Request, body: ChatCompletionRequest) -> Any:
            self.check_model(body.model)
            self.check_supported(body)
            messages = body.message_dicts()
            try:
                prompt = await asyncio.to_thread(
                    render_chat, self.tokenizer, self.settings.chat, messages
                )
            except Exception as error:  # the template rejected the conversation
                raise APIError(
                    400,
                    f"the chat template ({self.settings.chat.source}) failed: {error}",
                    param="messages",
                ) from None
            max_tokens = self.max_tokens(body.requested_max_tokens(), [prompt], None)
            generation = self.start(
                "chatcmpl", [prompt], body, max_tokens, body.logprob_count(), chat=True
            )
            text = json.dumps(messages, ensure_ascii=False) if self.settings.log_prompts else None
            return await self.respond(http, generation, body, [], text)

        return app


def validation_error(error: RequestValidationError) -> APIError:
    """pydantic's first complaint as one OpenAI-style 400."""
    errors = error.errors()
    first = errors[0] if errors else {}
    kind = first.get("type", "")
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    got = first.get("input")
    shown = "an object" if isinstance(got, dict) else json.dumps(got, default=str)[:80]
    if kind == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        return APIError(400, f"malformed JSON body: {detail}".rstrip(": "))
    if kind == "extra_forbidden":
        return APIError(400, f"Unrecognized request argument supplied: {param}", param=param)
    if kind == "missing":
        return APIError(400, f"missing required field: {param}", param=param)
    if loc and loc[0] == "prompt":
        return APIError(400, f"prompt must be {PROMPT_FORMS} (got {shown})", param="prompt")
    if not loc:
        return APIError(400, f"the request body must be a JSON object (got {shown})")
    message = first.get("msg", "invalid value")
    return APIError(400, f"{param}: {message} (got {shown})", param=param)
