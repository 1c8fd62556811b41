"""Per-row sampling: greedy, temperature, top-k/top-p, penalties, bias, seeds, log-probabilities."""

from __future__ import annotations

import pytest
import torch

from forgather.serve.sampling import RowInput, SamplingParams, logprobs_of, make_generator, sample

pytestmark = pytest.mark.unit


def row(seed: int | None = 0, generated=(), **params) -> RowInput:
    params.setdefault("max_tokens", 8)
    return RowInput(SamplingParams(**params), make_generator(seed), list(generated))


def logits(rows: int = 1, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed))


def test_temperature_zero_is_argmax():
    x = logits(3)
    assert sample(x, [row(temperature=0.0) for _ in range(3)]) == x.argmax(-1).tolist()


def test_top_k_one_is_argmax_at_any_temperature():
    x = logits(2)
    assert (
        sample(x, [row(temperature=1.5, top_k=1), row(temperature=0.3, top_k=1)])
        == x.argmax(-1).tolist()
    )


def test_top_p_keeps_only_the_nucleus():
    x = torch.tensor([[3.0, 2.9, 0.5, 0.5, 0.5]])  # the top two hold 89%
    picked = {sample(x, [row(seed=s, temperature=1.0, top_p=0.5)])[0] for s in range(40)}
    assert picked <= {0, 1}
    wide = {sample(x, [row(seed=s, temperature=1.0)])[0] for s in range(400)}
    assert wide > {0, 1}


def test_same_seed_same_token_whatever_the_other_rows():
    x = logits(4)
    alone = sample(x[2:3], [row(seed=9, temperature=1.0)])
    together = sample(
        x, [row(seed=1, temperature=1.0), row(seed=2), row(seed=9, temperature=1.0), row(seed=None)]
    )
    assert together[2] == alone[0]


def test_logit_bias_can_force_a_token():
    x = logits(1)
    assert sample(x, [row(temperature=0.0, logit_bias={7: 100.0})]) == [7]


def test_frequency_penalty_steers_away_from_repeats():
    x = torch.tensor([[2.0, 1.9, 0.0]])
    assert sample(x, [row(temperature=0.0)]) == [0]
    penalized = row(temperature=0.0, frequency_penalty=0.2, generated=[0, 0])
    assert sample(x, [penalized]) == [1]
    present = row(temperature=0.0, presence_penalty=0.5, generated=[0])
    assert sample(x, [present]) == [1]


def test_logprobs_only_for_rows_that_ask():
    x = logits(2)
    rows = [row(temperature=0.0, logprobs=3), row(temperature=0.0)]
    tokens = sample(x, rows)
    got = logprobs_of(x, tokens, rows)
    expected = torch.log_softmax(x[0], -1)
    assert got[1] is None
    assert got[0].logprob == pytest.approx(expected[tokens[0]].item())
    assert [i for i, _ in got[0].top] == expected.topk(3).indices.tolist()
