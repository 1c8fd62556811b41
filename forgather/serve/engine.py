"""The generation engine: one thread owns the model and runs every request with continuous batching.

Each loop iteration takes new requests and cancellations, gives waiting requests free cache slots,
runs at most ``prefill_chunk`` prompt tokens of prefill (so a long prompt delays the running streams
by one chunk at most), then one decode step for every running sequence together. A sequence joins
the batch the step after its prefill and leaves it the moment it finishes or its request is
cancelled; its slot is free for the next request at once.

Results go back through each request's ``deliver`` callback, called from the engine thread once per
step with that request's new :class:`Delta` items, or through ``on_step`` with every request's items
of the step at once (how the server's engine process sends them to the HTTP process).
"""

from __future__ import annotations

import heapq
import inspect
import logging
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from forgather.serve.cuda_graphs import DecodeGraphs
from forgather.serve.kv_cache import CacheView, SlotKVCache, visible_keys
from forgather.serve.sampling import (
    RowInput,
    SamplingParams,
    TokenLogprobs,
    logprobs_of,
    make_generator,
    sample,
)
from forgather.serve.text import IncrementalDecoder, StopStrings

log = logging.getLogger("forgather.serve")

DEFAULT_PREFILL_CHUNK = 512


class EngineError(RuntimeError):
    """A request the engine cannot take (the server answers 400 naming ``param``)."""

    def __init__(self, message: str, param: str = "prompt", code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass
class TokenInfo:
    """One generated token with its log-probabilities (for requests that asked for them)."""

    token_id: int
    text_offset: int
    logprobs: TokenLogprobs


@dataclass
class Delta:
    """What one choice of a request produced in one step."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenInfo] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None


@dataclass
class Request:
    """A generation request: prompt tokens, sampling parameters and where results go."""

    id: str
    prompt_ids: list[int]
    params: SamplingParams
    deliver: Callable[[list[Delta]], None]
    submitted: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    finished: float | None = None
    completion_tokens: int = 0
    cancelled: bool = False

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.submitted


@dataclass
class Sequence:
    """One choice of a request, in one cache slot."""

    request: Request
    index: int
    slot: int
    tokens: list[int]
    generator: torch.Generator
    decoder: IncrementalDecoder
    stops: StopStrings
    cursor: int = 0
    generated: list[int] = field(default_factory=list)
    text_length: int = 0
    finish_reason: str | None = None

    def row(self) -> RowInput:
        return RowInput(self.request.params, self.generator, self.generated)


def check_request(
    prompt_len: int, params: SamplingParams, max_model_len: int, max_batch_size: int
) -> None:
    """Raise EngineError if a request cannot run on an engine of these limits."""
    if prompt_len == 0:
        raise EngineError("the prompt is empty (and the tokenizer has no BOS token to start from)")
    if params.n > max_batch_size:
        raise EngineError(
            f"n={params.n} exceeds the server's --max-batch-size {max_batch_size}", param="n"
        )
    if prompt_len >= max_model_len:
        raise EngineError(
            f"the prompt is {prompt_len} tokens but the model's context is "
            f"{max_model_len} tokens (prompt and completion together)",
            code="context_length_exceeded",
        )
    if prompt_len + params.max_tokens > max_model_len:
        raise EngineError(
            f"the prompt is {prompt_len} tokens and max_tokens is {params.max_tokens}, "
            f"but the model's context is {max_model_len} tokens (prompt and completion "
            "together); lower max_tokens or shorten the prompt",
            param="max_tokens",
            code="context_length_exceeded",
        )


def model_context_length(model: Any) -> int | None:
    """The longest sequence a model's config says it handles, if it says."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def attention_window(config: Any) -> int | None:
    """The sliding window every layer attends within (Mistral's ``sliding_window``, Qwen's when
    ``use_sliding_window``), None for full attention. The step's mask is one for all layers, so a
    model that mixes full and sliding layers is refused rather than served wrong."""
    window = getattr(config, "sliding_window", None)
    kinds = set(getattr(config, "layer_types", None) or ())
    if not window or not getattr(config, "use_sliding_window", True) or kinds == {"full_attention"}:
        return None
    if kinds - {"sliding_attention"}:
        raise ValueError(
            f"the model mixes attention kinds across layers (layer_types: {sorted(kinds)}); "
            "the server applies one attention mask to every layer"
        )
    return int(window)


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every id that ends a sequence: the generation config's, else the model config's, else the tokenizer's."""
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if value is not None:
            ids = value if isinstance(value, list | tuple) else [value]
            return {int(i) for i in ids}
    if getattr(tokenizer, "eos_token_id", None) is not None:
        return {int(tokenizer.eos_token_id)}
    return set()


class Engine:
    """Continuous batching over a slot KV cache for one causal LM (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch_size: int = 32,
        max_model_len: int | None = None,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        eos_ids: set[int] | None = None,
        on_step: Callable[[list[tuple[Request, list[Delta]]]], None] | None = None,
        cuda_graphs: bool = True,
    ):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if prefill_chunk < 1:
            raise ValueError("prefill_chunk must be at least 1")
        self.model = model
        self.tokenizer = tokenizer
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        context = model_context_length(model)
        if max_model_len is None:
            max_model_len = context or 2048
        elif context is not None and max_model_len > context:
            raise ValueError(
                f"--max-model-len {max_model_len} exceeds the model's context length {context}"
            )
        self.max_model_len = max_model_len
        self.max_batch_size = max_batch_size
        self.prefill_chunk = prefill_chunk
        self.eos_ids = eos_token_ids(model, tokenizer) if eos_ids is None else set(eos_ids)
        self.on_step = on_step
        self.cache = SlotKVCache(max_batch_size, max_model_len, self.device, self.dtype)
        self._positions = torch.arange(max_model_len + 1, device=self.device)
        self.window = attention_window(model.config)
        self.graphs: DecodeGraphs | None = None
        if cuda_graphs and self.device.type == "cuda":
            self.graphs = DecodeGraphs(self._forward, self.cache, self._positions, self.window)
        self._cache_arg = (
            "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        )
        self._free: list[int] = list(range(max_batch_size))
        self._waiting: deque[tuple[Request, list[Sequence]]] = deque()
        self._prefilling: deque[list[Sequence]] = deque()
        self._running: dict[int, Sequence] = {}
        self._commands: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._load_changed = False
        self.steps = 0

    # ------------------------------------------------------------ public API (any thread)

    def check(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Raise EngineError if a request cannot run here (too long, too many choices)."""
        check_request(len(prompt_ids), params, self.max_model_len, self.max_batch_size)

    def submit(self, request: Request) -> None:
        """Queue a request (checked first); results arrive through ``request.deliver``."""
        self.check(request.prompt_ids, request.params)
        self._commands.put(("submit", request))

    def cancel(self, request: Request) -> None:
        """Stop a request and free its slots at the next step (its client went away)."""
        request.cancelled = True
        self._commands.put(("cancel", request))

    @property
    def alive(self) -> bool:
        """Whether the engine thread is running."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def load(self) -> dict[str, int]:
        """Sequences running, prefilling and waiting (approximate: read without locking)."""
        return {
            "running": len(self._running),
            "prefilling": sum(len(group) for group in self._prefilling),
            "waiting": len(self._waiting),
            "free_slots": len(self._free),
        }

    def start(self) -> None:
        """Start the engine thread; returns once it has warmed up (allocated the cache)."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            # The warm-up runs in the engine thread: on the CPU, torch ops from a second thread
            # after a warm-up in the first ran ~30% slower per step (two OpenMP thread teams).
            try:
                self.warmup()
            except BaseException as error:
                failure.append(error)
                return
            finally:
                ready.set()
            self._loop()

        self._thread = threading.Thread(target=run, name="forgather-engine", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]

    def close(self) -> None:
        self._commands.put(("stop", None))
        if self._thread is not None:
            self._thread.join(timeout=30)

    def warmup(self) -> None:
        """One forward through slot 0 (allocates the cache, loads kernels); captures decode graphs."""
        with torch.inference_mode():
            self._forward(
                torch.zeros((1, 1), dtype=torch.long, device=self.device),
                torch.zeros((1, 1), dtype=torch.long, device=self.device),
                torch.ones((1, 1, 1, 1), dtype=torch.bool, device=self.device),
                self.cache.prefill_view(0, 0, 1),
                logits_to_keep=1,
            )
            if self.graphs is not None:
                started = time.monotonic()
                try:
                    self.graphs.capture_all()
                except Exception as error:  # e.g. a model that synchronises with the CPU
                    log.warning("CUDA graphs are off for this model (%s); decoding eagerly", error)
                    self.graphs = None
                else:
                    log.info(
                        "captured %d decode CUDA graphs in %.1f s",
                        len(self.graphs.steps),
                        time.monotonic() - started,
                    )

    # ------------------------------------------------------------ the loop (engine thread)

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while not self._stopping:
            idle = not (self._waiting or self._prefilling or self._running)
            self._take_commands(block=idle)
            if self._stopping:
                break
            self._admit()
            if not (self._prefilling or self._running):
                if self._load_changed and self.on_step is not None:
                    self.on_step([])  # publish the freed slots of cancelled requests
                self._load_changed = False
                continue
            self._load_changed = False
            try:
                with torch.inference_mode():
                    self._step()
            except Exception as error:  # a failed step fails its requests, not the server
                log.error("engine step failed: %s", "".join(traceback.format_exception(error)))
                self._fail_all(f"generation failed: {error}")
        self._fail_all("the server is shutting down")

    def _take_commands(self, block: bool) -> None:
        try:
            command = self._commands.get(block=block, timeout=None)
        except queue.Empty:
            return
        while True:
            kind, payload = command
            if kind == "stop":
                self._stopping = True
            elif kind == "submit" and not payload.cancelled:
                self._waiting.append((payload, []))
            elif kind == "cancel":
                self._drop(payload)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _admit(self) -> None:
        while self._waiting and len(self._free) >= self._waiting[0][0].params.n:
            request, _ = self._waiting.popleft()
            slots = [heapq.heappop(self._free) for _ in range(request.params.n)]
            group = [self._new_sequence(request, i, slot) for i, slot in enumerate(slots)]
            self._prefilling.append(group)

    def _new_sequence(self, request: Request, index: int, slot: int) -> Sequence:
        seed = request.params.seed
        return Sequence(
            request=request,
            index=index,
            slot=slot,
            tokens=list(request.prompt_ids),
            generator=make_generator(None if seed is None else seed + index),
            decoder=IncrementalDecoder(self.tokenizer, request.prompt_ids),
            stops=StopStrings(request.params.stop),
        )

    def _release(self, seq: Sequence) -> None:
        self._running.pop(seq.slot, None)
        heapq.heappush(self._free, seq.slot)

    def _drop(self, request: Request) -> None:
        """Forget a cancelled request wherever it is and free its slots."""
        self._load_changed = True
        self._waiting = deque(item for item in self._waiting if item[0] is not request)
        for group in list(self._prefilling):
            if group[0].request is request:
                self._prefilling.remove(group)
                for seq in group:
                    heapq.heappush(self._free, seq.slot)
        for seq in [s for s in self._running.values() if s.request is request]:
            self._release(seq)

    def _fail_all(self, message: str) -> None:
        for request, _ in self._waiting:
            request.deliver([Delta(0, finish_reason="error", error=message)])
        groups = list(self._prefilling)
        running: dict[int, list[Sequence]] = {}
        for seq in self._running.values():
            running.setdefault(id(seq.request), []).append(seq)
        for seqs in [*groups, *running.values()]:
            seqs[0].request.deliver(
                [Delta(s.index, finish_reason="error", error=message) for s in seqs]
            )
            for seq in seqs:
                self._release(seq)
        self._waiting.clear()
        self._prefilling.clear()

    # ------------------------------------------------------------ one step

    def _forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        mask: torch.Tensor,
        view: CacheView,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        kwargs = {self._cache_arg: view, "use_cache": True}
        if logits_to_keep:
            kwargs["logits_to_keep"] = logits_to_keep
        out = self.model(
            input_ids=input_ids, position_ids=position_ids, attention_mask=mask, **kwargs
        )
        return out.logits[:, -1, :]

    def _step(self) -> None:
        self.steps += 1
        outputs: dict[int, tuple[Request, list[Delta]]] = {}
        self._prefill_step(outputs)
        if self._running:
            self._decode_step(outputs)
        done = [(r, deltas) for r, deltas in outputs.values() if not r.cancelled]
        if self.on_step is not None:
            self.on_step(done)
        else:
            for request, deltas in done:
                request.deliver(deltas)

    def _prefill_step(self, outputs: dict[int, tuple[Request, list[Delta]]]) -> None:
        """Up to ``prefill_chunk`` prompt tokens, of as many waiting prompts as fit, in one forward."""
        budget = self.prefill_chunk
        chunks: list[tuple[list[Sequence], int, int]] = []  # (group, start, length)
        for group in self._prefilling:
            parent = group[0]
            length = min(len(parent.request.prompt_ids) - parent.cursor, budget)
            chunks.append((group, parent.cursor, length))
            budget -= length
            if budget == 0:
                break
        if not chunks:
            return
        logits = self._prefill_forward(chunks)
        for row, (group, _, length) in enumerate(chunks):
            parent = group[0]
            parent.cursor += length
            prompt_len = len(parent.request.prompt_ids)
            if parent.cursor < prompt_len:
                continue  # the rest of this prompt waits for the next step
            self._prefilling.remove(group)
            self.cache.copy_prefix(parent.slot, [s.slot for s in group[1:]], prompt_len)
            for seq in group:
                self._running[seq.slot] = seq
            self._accept(group, logits[row : row + 1].expand(len(group), -1), outputs)

    def _prefill_forward(self, chunks: list[tuple[list[Sequence], int, int]]) -> torch.Tensor:
        """Logits after the last token of each chunk (rows in the order of ``chunks``).

        Several chunks are left-padded to the longest, so every row's last token is the last
        position: padding writes to the trash column and attends key 0 only.
        """
        if len(chunks) == 1:
            (group, start, length), parent = chunks[0], chunks[0][0][0]
            positions = self._positions[start : start + length]
            keys = self._positions[None, : start + length]
            mask = visible_keys(keys, positions[:, None], self.window)[None, None]
            ids = torch.tensor(
                [parent.request.prompt_ids[start : start + length]], device=self.device
            )
            view = self.cache.prefill_view(parent.slot, start, length)
            return self._forward(ids, positions[None], mask, view, logits_to_keep=1)
        width = max(length for _, _, length in chunks)
        ids, positions, writes, slots = [], [], [], []
        for group, start, length in chunks:
            parent, pad = group[0], width - length
            ids.append([0] * pad + parent.request.prompt_ids[start : start + length])
            span = list(range(start, start + length))
            positions.append([0] * pad + span)
            writes.append([self.cache.trash] * pad + span)
            slots.append(parent.slot)
        kv_len = max(start + length for _, start, length in chunks)
        table = torch.tensor([ids, positions, writes], dtype=torch.long, device=self.device)
        keys = self._positions[None, None, :kv_len]
        mask = visible_keys(keys, table[1][:, :, None], self.window)[:, None]
        view = self.cache.batch_view(torch.tensor(slots, device=self.device), table[2], kv_len)
        return self._forward(table[0], table[1], mask, view, logits_to_keep=1)

    def _decode_step(self, outputs: dict[int, tuple[Request, list[Delta]]]) -> None:
        # Inputs of every slot up to the highest running one, built with as few torch ops as
        # possible (each op is a point where the server's event loop can take the GIL): rows
        # without a running sequence read key 0 and write to the cache's trash column.
        rows = max(self._running) + 1
        seqs = list(self._running.values())
        table = [[0] * rows, [0] * rows, [self.cache.trash] * rows]
        kv_len = 0
        for seq in seqs:
            where = len(seq.tokens) - 1
            table[0][seq.slot] = seq.tokens[-1]
            table[1][seq.slot] = table[2][seq.slot] = where
            kv_len = max(kv_len, where + 1)
        logits = self._graph_step(table, kv_len)
        if logits is None:
            inputs = torch.tensor(table, dtype=torch.long, device=self.device)
            position_ids = inputs[1, :, None]
            keys = self._positions[None, :kv_len]
            mask = visible_keys(keys, position_ids, self.window)[:, None, None, :]
            logits = self._forward(
                inputs[0, :, None],
                position_ids,
                mask,
                self.cache.decode_view(rows, inputs[2], kv_len),
            )
        if len(seqs) < rows or any(seq.slot != i for i, seq in enumerate(seqs)):
            logits = logits[[seq.slot for seq in seqs]]
        self._accept(seqs, logits, outputs)

    def _graph_step(self, table: list[list[int]], kv_len: int) -> torch.Tensor | None:
        """The decode step's logits from a CUDA graph, or None to run it eagerly."""
        if self.graphs is None:
            return None
        try:
            return self.graphs.run(table, kv_len)
        except Exception as error:  # e.g. a model that synchronises with the CPU in forward()
            log.warning("CUDA graphs are off for this model (%s); decoding eagerly", error)
            self.graphs = None
            return None

    def _accept(
        self,
        seqs: list[Sequence],
        logits: torch.Tensor,
        outputs: dict[int, tuple[Request, list[Delta]]],
    ) -> None:
        """Sample the next token of each sequence, update its text, finish it when it is done."""
        rows = [s.row() for s in seqs]
        tokens = sample(logits, rows)
        logprobs = logprobs_of(logits, tokens, rows)
        now = time.monotonic()
        for seq, token, lp in zip(seqs, tokens, logprobs, strict=True):
            request = seq.request
            if request.first_token is None:
                request.first_token = now
            delta = self._advance(seq, token, lp)
            outputs.setdefault(id(request), (request, []))[1].append(delta)
            if delta.finish_reason is not None:
                self._release(seq)
                if not any(s.request is request for s in self._running.values()):
                    request.finished = now

    def _advance(self, seq: Sequence, token: int, lp: TokenLogprobs | None) -> Delta:
        request = seq.request
        seq.generated.append(token)
        seq.tokens.append(token)
        request.completion_tokens += 1
        delta = Delta(seq.index, token_ids=[token])
        if token in self.eos_ids:
            piece = ""
            seq.finish_reason = "stop"
        else:
            piece = seq.decoder.push(token)
        if lp is not None:
            delta.logprobs.append(TokenInfo(token, seq.text_length, lp))
        seq.text_length += len(piece)
        delta.text = seq.stops.feed(piece)
        if seq.stops.stopped:
            seq.finish_reason = "stop"
        elif seq.finish_reason is None and (
            len(seq.generated) >= request.params.max_tokens or len(seq.tokens) >= self.max_model_len
        ):
            seq.finish_reason = "length"
        if seq.finish_reason is not None:
            if not seq.stops.stopped:
                delta.text += seq.stops.feed(seq.decoder.flush()) + seq.stops.finish()
            delta.finish_reason = seq.finish_reason
        return delta
