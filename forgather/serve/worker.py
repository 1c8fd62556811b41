"""The engine in its own process, and the HTTP process's handle on it.

The server runs the model in a child process so that generation and HTTP never wait for each
other's Python (one interpreter lock each). The child (:func:`worker_main`) loads the model, starts
an :class:`~forgather.serve.engine.Engine` and reports ``ready`` with the engine's limits; then it
takes ``submit``/``cancel``/``stop`` messages on one pipe and sends each step's deltas, all
requests together, on another. :class:`EngineProcess` is the parent's side: it checks requests
against the same limits, sends them, and hands deltas to each request's ``deliver`` inside the
asyncio event loop (the pipe is watched with ``loop.add_reader``). If the child dies, every open
request fails with a server error and ``on_exit`` is called so the server stops (its supervisor,
e.g. Docker's restart policy, starts a fresh one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from forgather.errors import ForgatherError
from forgather.serve.engine import Delta, check_request
from forgather.serve.sampling import SamplingParams

log = logging.getLogger("forgather.serve")


class EngineStartError(ForgatherError):
    """The engine process could not load the model or start."""


@dataclass(frozen=True)
class EngineConfig:
    """What the child needs to build the engine (picklable)."""

    model: str
    device: str = "auto"
    dtype: str = "auto"
    max_batch_size: int = 32
    max_model_len: int | None = None
    prefill_chunk: int = 512
    cuda_graphs: bool = True


@dataclass(frozen=True)
class EngineInfo:
    """What the child reports once the engine runs."""

    model_dir: str
    max_model_len: int
    max_batch_size: int
    vocab_size: int
    parameters: int
    dtype: str
    device: str
    cache_bytes: int
    load_seconds: float


@dataclass
class PendingRequest:
    """A request as the HTTP process tracks it."""

    id: str
    prompt_ids: list[int]
    params: SamplingParams
    deliver: Callable[[list[Delta]], None]
    submitted: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    finished: float | None = None
    completion_tokens: int = 0
    open_choices: int = 0

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.submitted


# ---------------------------------------------------------------- the child


def worker_main(config: EngineConfig, commands: Connection, events: Connection) -> None:
    """Entry point of the engine process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    try:
        engine, info = _start_engine(config)
    except BaseException as error:
        message = str(error) if isinstance(error, ForgatherError) else _describe(error)
        events.send(("error", message))
        return

    from forgather.serve.engine import Request

    requests: dict[str, Any] = {}

    def send_step(outputs: list[tuple[Any, list[Delta]]]) -> None:
        events.send(("deltas", [(r.id, deltas) for r, deltas in outputs], engine.load))
        for request, _ in outputs:
            if request.finished is not None:
                requests.pop(request.id, None)

    def deliver_one(request_id: str) -> Callable[[list[Delta]], None]:
        return lambda deltas: events.send(("deltas", [(request_id, deltas)], engine.load))

    engine.on_step = send_step
    events.send(("ready", info))
    try:
        while True:
            try:
                message = commands.recv()
            except EOFError:  # the parent is gone
                break
            kind = message[0]
            if kind == "submit":
                _, request_id, prompt_ids, params = message
                request = Request(request_id, prompt_ids, params, deliver_one(request_id))
                requests[request_id] = request
                engine.submit(request)
            elif kind == "cancel":
                request = requests.pop(message[1], None)
                if request is not None:
                    engine.cancel(request)
            elif kind == "stop":
                break
    finally:
        engine.close()


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}\n{''.join(traceback.format_exception(error))}"


def _start_engine(config: EngineConfig) -> tuple[Any, EngineInfo]:
    from forgather.ml.models.loading import load_causal_lm
    from forgather.serve.engine import Engine

    started = time.monotonic()
    model, tokenizer, model_dir = load_causal_lm(config.model, config.device, config.dtype)
    try:
        engine = Engine(
            model,
            tokenizer,
            max_batch_size=config.max_batch_size,
            max_model_len=config.max_model_len,
            prefill_chunk=config.prefill_chunk,
            cuda_graphs=config.cuda_graphs,
        )
    except ValueError as error:
        raise EngineStartError(str(error)) from None
    engine.start()
    info = EngineInfo(
        model_dir=str(model_dir),
        max_model_len=engine.max_model_len,
        max_batch_size=engine.max_batch_size,
        vocab_size=int(getattr(model.config, "vocab_size", 0) or len(tokenizer)),
        parameters=sum(p.numel() for p in model.parameters()),
        dtype=str(engine.dtype).removeprefix("torch."),
        device=str(engine.device),
        cache_bytes=engine.cache.nbytes(),
        load_seconds=time.monotonic() - started,
    )
    return engine, info


# ---------------------------------------------------------------- the parent


class EngineClient:
    """What the HTTP side holds: the engine's limits, its requests, and their deltas.

    Subclasses carry requests to an engine (another process, or a thread of this one) and call
    :meth:`_dispatch` inside the event loop with each step's ``(request id, deltas)`` items.
    """

    def __init__(self) -> None:
        self.info: EngineInfo | None = None
        self.load: dict[str, int] = {}
        self.on_exit: Callable[[str], None] = lambda reason: None
        self._requests: dict[str, PendingRequest] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dead: str | None = None

    # ------------------------------------------------------------ transport (subclasses)

    def wait_ready(self, timeout: float | None = None) -> EngineInfo:
        raise NotImplementedError

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver results inside ``loop`` (call from the running loop)."""
        self._loop = loop

    def close(self) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        raise NotImplementedError

    def _send_submit(self, request: PendingRequest) -> None:
        raise NotImplementedError

    def _send_cancel(self, request_id: str) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------ the interface the app uses

    @property
    def alive(self) -> bool:
        return self._dead is None and self.running

    @property
    def max_model_len(self) -> int:
        assert self.info is not None
        return self.info.max_model_len

    @property
    def max_batch_size(self) -> int:
        assert self.info is not None
        return self.info.max_batch_size

    def _ready(self, info: EngineInfo) -> EngineInfo:
        self.info = info
        self.load = {"running": 0, "prefilling": 0, "waiting": 0, "free_slots": info.max_batch_size}
        return info

    def check(self, prompt_ids: list[int], params: SamplingParams) -> None:
        check_request(len(prompt_ids), params, self.max_model_len, self.max_batch_size)

    def submit(self, request: PendingRequest) -> None:
        """Check and send a request; its deltas arrive through ``request.deliver`` in the loop."""
        if self._dead is not None:
            raise EngineStartError(self._dead)
        self.check(request.prompt_ids, request.params)
        request.open_choices = request.params.n
        self._requests[request.id] = request
        self._send_submit(request)

    def cancel(self, request: PendingRequest) -> None:
        if self._requests.pop(request.id, None) is not None and self._dead is None:
            self._send_cancel(request.id)

    def _dispatch(self, items: list[tuple[str, list[Delta]]], load: dict[str, int]) -> None:
        self.load = load
        now = time.monotonic()
        for request_id, deltas in items:
            request = self._requests.get(request_id)
            if request is None:
                continue  # cancelled meanwhile
            if request.first_token is None:
                request.first_token = now
            for delta in deltas:
                request.completion_tokens += len(delta.token_ids)
                if delta.finish_reason is not None:
                    request.open_choices -= 1
            if request.open_choices <= 0:
                request.finished = now
                del self._requests[request_id]
            request.deliver(deltas)

    def _died(self, reason: str) -> None:
        self._dead = reason
        log.error("%s; failing %d open request(s)", reason, len(self._requests))
        for request in list(self._requests.values()):
            request.deliver(
                [Delta(i, finish_reason="error", error=reason) for i in range(request.params.n)]
            )
        self._requests.clear()
        self.on_exit(reason)


class EngineProcess(EngineClient):
    """The engine in a child process (see the module docstring)."""

    def __init__(self, config: EngineConfig):
        super().__init__()
        context = multiprocessing.get_context("spawn")
        child_commands, self._commands = context.Pipe(duplex=False)  # (reader, writer)
        self._events, child_events = context.Pipe(duplex=False)
        self.process = context.Process(
            target=worker_main,
            args=(config, child_commands, child_events),
            name="forgather-engine",
            daemon=True,
        )
        self.process.start()
        child_commands.close()
        child_events.close()

    def wait_ready(self, timeout: float | None = None) -> EngineInfo:
        """Block until the child reports ready; EngineStartError with its reason otherwise."""
        if not self._events.poll(timeout):
            self.close()
            raise EngineStartError(f"the engine process did not start within {timeout:g} s")
        try:
            message = self._events.recv()
        except EOFError:
            self.process.join(5)
            raise EngineStartError(
                f"the engine process exited ({self.process.exitcode}) while loading the model"
            ) from None
        if message[0] == "error":
            self.process.join(5)
            raise EngineStartError(message[1])
        return self._ready(message[1])

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        super().attach(loop)
        loop.add_reader(self._events.fileno(), self._on_readable)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the child (stop message, then terminate, then kill)."""
        if self._loop is not None:
            self._loop.remove_reader(self._events.fileno())
            self._loop = None
        if self.process.is_alive():
            with contextlib.suppress(OSError):
                self._commands.send(("stop",))
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()

    @property
    def running(self) -> bool:
        return self.process.is_alive()

    def _send_submit(self, request: PendingRequest) -> None:
        self._commands.send(("submit", request.id, request.prompt_ids, request.params))

    def _send_cancel(self, request_id: str) -> None:
        with contextlib.suppress(OSError):
            self._commands.send(("cancel", request_id))

    def _on_readable(self) -> None:
        try:
            while self._events.poll():
                message = self._events.recv()
                if message[0] == "deltas":
                    self._dispatch(message[1], message[2])
        except (EOFError, OSError):
            if self._loop is not None:
                self._loop.remove_reader(self._events.fileno())
            self.process.join(2)
            self._died(
                f"the engine process exited unexpectedly (exit code {self.process.exitcode})"
            )
