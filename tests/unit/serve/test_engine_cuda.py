"""The engine on a GPU, eager and with CUDA-graph decode steps: greedy output equals generate()
alone and batched (float32)."""

from __future__ import annotations

import pytest
import torch

from .conftest import MODELS, PROMPTS, reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("graphs", [True, False], ids=["cuda-graphs", "eager"])
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_greedy_batched_on_cuda_equals_generate(kind, graphs, tokenizer, make_engine):
    model = MODELS[kind]().cuda()
    harness = make_engine(model, eos_ids=set(), cuda_graphs=graphs)
    prompts = [tokenizer(t)["input_ids"] for t in PROMPTS]
    lengths = [24, 5, 31, 12]
    captured = dict(harness.engine.graphs.steps) if graphs else {}
    submitted = [
        harness.submit(ids, max_tokens=n)[1] for ids, n in zip(prompts, lengths, strict=True)
    ]
    for ids, n, collected in zip(prompts, lengths, submitted, strict=True):
        harness.wait(collected)
        assert collected.tokens() == reference(model, ids, n)
    if graphs:
        assert harness.engine.graphs is not None, "capture failed: the engine fell back to eager"
        # every shape was captured at warm-up; serving replayed them and captured nothing new
        assert captured and harness.engine.graphs.steps == captured
        assert set(captured) == set(harness.engine.graphs.shapes())
