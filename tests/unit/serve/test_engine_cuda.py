"""The engine on a GPU: greedy output equals generate() alone and batched (float32)."""

from __future__ import annotations

import pytest
import torch

from .conftest import MODELS, PROMPTS, reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_greedy_batched_on_cuda_equals_generate(kind, tokenizer, make_engine):
    model = MODELS[kind]().cuda()
    engine = make_engine(model, eos_ids=set())
    prompts = [tokenizer(t)["input_ids"] for t in PROMPTS]
    lengths = [24, 5, 31, 12]
    submitted = [
        engine.submit(ids, max_tokens=n)[1] for ids, n in zip(prompts, lengths, strict=True)
    ]
    for ids, n, collected in zip(prompts, lengths, submitted, strict=True):
        engine.wait(collected)
        expected = reference(model, ids, n)
        assert collected.tokens() == expected
