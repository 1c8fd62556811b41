"""A small real tokenizer and tiny random models (forgather's and plain Llama) for engine tests."""

from __future__ import annotations

import queue
from dataclasses import dataclass, field

import pytest
import torch

from forgather.ml.data.corpus import embedded_texts
from forgather.ml.data.tokenizer import train_tokenizer
from forgather.serve.engine import Delta, Engine, Request
from forgather.serve.sampling import SamplingParams

VOCAB = 400
PROMPTS = [
    "It is a truth universally acknowledged",
    "Elizabeth",
    "Mr. Darcy had walked away; and she remained with no very cordial feelings toward him, "
    "though she told the story however with great spirit among her friends",
    "The",
]


@pytest.fixture(scope="session")
def tokenizer():
    texts = embedded_texts("validation")[:4]
    return train_tokenizer(texts, vocab_size=VOCAB, model_max_length=512)


def forgather_model(seed: int = 0, **fields):
    from forgather.ml.models.transformer import ForgatherConfig, ForgatherForCausalLM

    torch.manual_seed(seed)
    config = ForgatherConfig(
        **fields,
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return ForgatherForCausalLM(config).eval()


def llama_model(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


def mistral_model(seed: int = 0, sliding_window: int = 8):
    """Hugging Face's Mistral with a sliding window (its generate() keeps a sliding cache)."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    config = MistralConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        sliding_window=sliding_window, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    return MistralForCausalLM(config).eval()


MODELS = {"forgather": forgather_model, "llama": llama_model}


@pytest.fixture(params=sorted(MODELS))
def model(request):
    return MODELS[request.param]()


@dataclass
class Collected:
    """Everything an engine request delivered."""

    deltas: list[Delta] = field(default_factory=list)
    events: queue.Queue = field(default_factory=queue.Queue)

    def choice(self, index: int = 0) -> list[Delta]:
        return [d for d in self.deltas if d.index == index]

    def tokens(self, index: int = 0) -> list[int]:
        return [t for d in self.choice(index) for t in d.token_ids]

    def text(self, index: int = 0) -> str:
        return "".join(d.text for d in self.choice(index))

    def finish(self, index: int = 0) -> str | None:
        reasons = [d.finish_reason for d in self.choice(index) if d.finish_reason]
        return reasons[-1] if reasons else None


class Harness:
    """An engine running in its thread, with helpers to submit and wait."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.count = 0

    def submit(self, prompt_ids: list[int], **params) -> tuple[Request, Collected]:
        params.setdefault("temperature", 0.0)
        params.setdefault("max_tokens", 16)
        collected = Collected()

        def deliver(deltas: list[Delta]) -> None:
            collected.deltas.extend(deltas)
            collected.events.put(deltas)

        self.count += 1
        request = Request(str(self.count), list(prompt_ids), SamplingParams(**params), deliver)
        self.engine.submit(request)
        return request, collected

    def wait(self, collected: Collected, n: int = 1, timeout: float = 60.0) -> Collected:
        finished: set[int] = set()
        while len(finished) < n:
            for delta in collected.events.get(timeout=timeout):
                if delta.finish_reason is not None:
                    finished.add(delta.index)
        return collected

    def run(self, prompt_ids: list[int], **params) -> Collected:
        _, collected = self.submit(prompt_ids, **params)
        return self.wait(collected, params.get("n", 1))


@pytest.fixture
def make_engine(tokenizer):
    """``make_engine(model, **options)``: a started engine, closed after the test."""
    engines = []

    def make(model, **options) -> Harness:
        options.setdefault("max_batch_size", 8)
        engine = Engine(model, tokenizer, **options)
        engine.start()
        engines.append(engine)
        return Harness(engine)

    yield make
    for engine in engines:
        engine.close()


def reference(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy tokens from Hugging Face ``generate()`` for one prompt alone (no EOS stop)."""
    with torch.no_grad():
        device = next(model.parameters()).device
        out = model.generate(
            torch.tensor([prompt_ids], device=device),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long, device=device),
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(prompt_ids) :].tolist()
