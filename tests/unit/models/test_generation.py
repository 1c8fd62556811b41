"""KV-cache decoding equals full recomputation."""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicCache

from .conftest import ALL_BACKENDS, VOCAB, tiny_model

pytestmark = pytest.mark.unit

POSITIONAL = ("rope", "alibi", "sinusoidal", "none")


def _cache_of(out):
    return out["cache"] if "cache" in out else out["past_key_values"]


@pytest.mark.parametrize("positional", POSITIONAL)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_incremental_logits_equal_full_forward(backend, positional):
    model = tiny_model(attention_backend=backend, positional_encoding=positional, qk_norm=True)
    ids = torch.randint(3, VOCAB, (2, 12))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :5], use_cache=True)
        cache = _cache_of(out)
        assert isinstance(cache, DynamicCache) and cache.get_seq_length() == 5
        steps = [out.logits]
        out = model(ids[:, 5:8], cache=cache)  # a chunk of 3 on top of the cache
        steps.append(out.logits)
        for t in range(8, 12):  # then one token at a time
            out = model(ids[:, t : t + 1], cache=_cache_of(out))
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=2e-5, rtol=0)


@pytest.mark.parametrize("positional", POSITIONAL)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_greedy_generate_with_cache_equals_recompute(backend, positional):
    model = tiny_model(attention_backend=backend, positional_encoding=positional)
    prompt = torch.randint(3, VOCAB, (2, 5))
    kwargs = dict(max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        cached = model.generate(prompt, use_cache=True, **kwargs)
        recomputed = model.generate(prompt, use_cache=False, **kwargs)
    assert cached.shape == (2, 15)
    assert torch.equal(cached, recomputed)
    assert torch.equal(cached[:, :5], prompt)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_left_padded_batch_generation_matches_single_prompts(backend):
    model = tiny_model(attention_backend=backend)
    short, long = torch.randint(3, VOCAB, (1, 3)), torch.randint(3, VOCAB, (1, 6))
    batch = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1), long])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1] * 6])
    kwargs = dict(max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        together = model.generate(batch, attention_mask=mask, **kwargs)
        alone_short = model.generate(short, **kwargs)
        alone_long = model.generate(long, **kwargs)
    assert torch.equal(together[0, 3:], alone_short[0])
    assert torch.equal(together[1], alone_long[0])
