"""Choosing the next token of every running sequence from one step's logits.

Per sequence: logit bias and presence/frequency penalties, then temperature (0 means greedy), top-k
and top-p. Each sequence draws from its own ``torch.Generator``, so a request with a ``seed`` gets
the same tokens whether it runs alone or batched with others. Log-probabilities, when asked for, are
those of the model's own distribution (before any of the adjustments above).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How one request generates (the OpenAI fields, already validated)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    n: int = 1

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias)


@dataclass
class RowInput:
    """What the sampler needs of one sequence at this step."""

    params: SamplingParams
    generator: torch.Generator | None
    generated: list[int]


@dataclass
class TokenLogprobs:
    """The chosen token's log-probability and the ``top`` most likely alternatives."""

    logprob: float
    top: list[tuple[int, float]]


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded with ``seed``, or from the OS's entropy when it is None."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def _adjusted(logits: torch.Tensor, rows: list[RowInput]) -> torch.Tensor:
    """Logits after each row's bias and penalties (a copy only when some row has them)."""
    if not any(r.params.penalized for r in rows):
        return logits
    logits = logits.clone()
    vocab = logits.shape[-1]
    for i, row in enumerate(rows):
        params = row.params
        if params.logit_bias:
            ids = torch.tensor(list(params.logit_bias), device=logits.device)
            bias = torch.tensor(list(params.logit_bias.values()), device=logits.device)
            logits[i, ids] += bias.to(logits.dtype)
        if (params.presence_penalty or params.frequency_penalty) and row.generated:
            counts = torch.bincount(
                torch.tensor(row.generated, device=logits.device), minlength=vocab
            )[:vocab].to(logits.dtype)
            logits[i] -= params.frequency_penalty * counts
            logits[i] -= params.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def _sample_rows(logits: torch.Tensor, rows: list[RowInput]) -> torch.Tensor:
    """One token per row by inverse-CDF sampling, with per-row temperature, top-k and top-p."""
    device = logits.device
    temperature = torch.tensor([r.params.temperature for r in rows], device=device)
    scaled = logits / temperature[:, None]
    uniforms = torch.tensor(
        [float(torch.rand(1, generator=r.generator)) for r in rows], device=device
    )
    truncated = any(r.params.top_k > 0 or r.params.top_p < 1.0 for r in rows)
    if not truncated:
        probs = torch.softmax(scaled, dim=-1)
        cdf = probs.cumsum(dim=-1)
        picked = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None])
        return picked[:, 0].clamp(max=logits.shape[-1] - 1)
    ordered, order = scaled.sort(dim=-1, descending=True)
    probs = torch.softmax(ordered, dim=-1)
    vocab = logits.shape[-1]
    rank = torch.arange(vocab, device=device)[None, :]
    top_k = torch.tensor([r.params.top_k or vocab for r in rows], device=device)
    top_p = torch.tensor([r.params.top_p for r in rows], device=device)
    before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above each one
    keep = (rank < top_k[:, None]) & (before < top_p[:, None])
    keep[:, 0] = True
    probs = probs * keep
    cdf = probs.cumsum(dim=-1)
    picked = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None])[:, 0]
    picked = picked.clamp(max=vocab - 1)
    return order.gather(1, picked[:, None])[:, 0]


def sample(logits: torch.Tensor, rows: list[RowInput]) -> list[int]:
    """The next token of each row of ``logits`` (rows, vocab)."""
    logits = _adjusted(logits.float(), rows)
    tokens = logits.argmax(dim=-1)
    sampled = [i for i, r in enumerate(rows) if not r.params.greedy]
    if sampled:
        index = torch.tensor(sampled, device=logits.device)
        tokens[index] = _sample_rows(logits[index], [rows[i] for i in sampled])
    return tokens.tolist()


def logprobs_of(
    logits: torch.Tensor, tokens: list[int], rows: list[RowInput]
) -> list[TokenLogprobs | None]:
    """For rows that asked for log-probabilities: the chosen token's and the top alternatives'."""
    wanted = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
    result: list[TokenLogprobs | None] = [None] * len(rows)
    if not wanted:
        return result
    index = torch.tensor(wanted, device=logits.device)
    logp = torch.log_softmax(logits[index].float(), dim=-1)
    chosen = logp.gather(
        1, torch.tensor([tokens[i] for i in wanted], device=logits.device)[:, None]
    )
    most = max(rows[i].params.logprobs or 0 for i in wanted)
    top_values, top_ids = logp.topk(most, dim=-1) if most else (None, None)
    chosen_list = chosen[:, 0].tolist()
    for j, i in enumerate(wanted):
        count = rows[i].params.logprobs or 0
        top = (
            list(zip(top_ids[j, :count].tolist(), top_values[j, :count].tolist(), strict=True))
            if count
            else []
        )
        result[i] = TokenLogprobs(chosen_list[j], top)
    return result
