"""The continuous-batching engine against Hugging Face generate(), on forgather's model and Llama."""

from __future__ import annotations

import time

import pytest

from forgather.serve.engine import EngineError

from .conftest import PROMPTS, forgather_model, mistral_model, reference

pytestmark = pytest.mark.unit


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text)["input_ids"]


def test_greedy_alone_equals_generate(model, tokenizer, make_engine):
    engine = make_engine(model, eos_ids=set())
    for text in PROMPTS:
        ids = encode(tokenizer, text)
        assert engine.run(ids, max_tokens=24).tokens() == reference(model, ids, 24), text


def test_greedy_batched_with_mixed_lengths_equals_generate(model, tokenizer, make_engine):
    engine = make_engine(model, eos_ids=set(), max_batch_size=8)
    prompts = [encode(tokenizer, t) for t in PROMPTS]
    lengths = [24, 5, 31, 12]  # sequences leave the batch at different steps
    submitted = [
        engine.submit(ids, max_tokens=n)[1] for ids, n in zip(prompts, lengths, strict=True)
    ]
    for ids, n, collected in zip(prompts, lengths, submitted, strict=True):
        engine.wait(collected)
        assert collected.tokens() == reference(model, ids, n)
        assert collected.finish() == "length"


def test_chunked_prefill_equals_generate_and_keeps_streams_running(model, tokenizer, make_engine):
    engine = make_engine(model, eos_ids=set(), prefill_chunk=8)
    running_ids = encode(tokenizer, PROMPTS[1])
    long_ids = encode(tokenizer, PROMPTS[2] * 3)
    _, running = engine.submit(running_ids, max_tokens=40)
    running.events.get(timeout=30)  # the first stream is decoding
    steps_before = engine.engine.steps
    _, long = engine.submit(long_ids, max_tokens=6)
    engine.wait(long)
    prefill_steps = engine.engine.steps - steps_before
    engine.wait(running)
    assert long.tokens() == reference(model, long_ids, 6)
    assert running.tokens() == reference(model, running_ids, 40)
    # The long prompt needed several chunks, and the running stream got a token at every one.
    assert prefill_steps >= len(long_ids) // 8
    tokens_per_step = [len(d.token_ids) for d in running.deltas]
    assert tokens_per_step == [1] * 40


def test_a_freed_slot_serves_the_next_request_as_if_fresh(model, tokenizer, make_engine):
    engine = make_engine(model, eos_ids=set(), max_batch_size=1)
    first, second = encode(tokenizer, PROMPTS[2]), encode(tokenizer, PROMPTS[3])
    engine.run(first, max_tokens=30)
    assert engine.run(second, max_tokens=20).tokens() == reference(model, second, 20)


def test_requests_beyond_the_slots_wait_their_turn(model, tokenizer, make_engine):
    engine = make_engine(model, eos_ids=set(), max_batch_size=2)
    ids = encode(tokenizer, PROMPTS[0])
    submitted = [engine.submit(ids, max_tokens=8)[1] for _ in range(5)]
    expected = reference(model, ids, 8)
    for collected in submitted:
        assert engine.wait(collected).tokens() == expected


def test_eos_ends_a_sequence_and_is_not_shown(model, tokenizer, make_engine):
    ids = encode(tokenizer, PROMPTS[0])
    free = reference(model, ids, 10)
    eos = free[4]
    engine = make_engine(model, eos_ids={eos})
    collected = engine.run(ids, max_tokens=10)
    assert collected.tokens() == free[: free.index(eos) + 1]
    assert collected.finish() == "stop"
    assert collected.text() == tokenizer.decode(free[: free.index(eos)], skip_special_tokens=True)


def test_stop_string_is_cut_from_the_text(model, tokenizer, make_engine):
    ids = encode(tokenizer, PROMPTS[0])
    engine = make_engine(model, eos_ids=set())
    full = engine.run(ids, max_tokens=20).text()
    stop = full[5:8]
    collected = engine.run(ids, max_tokens=20, stop=(stop,))
    assert collected.finish() == "stop"
    assert collected.text() == full[: full.index(stop)]


def test_a_request_may_fill_the_context_exactly(model, tokenizer, make_engine):
    ids = encode(tokenizer, PROMPTS[0])
    engine = make_engine(model, eos_ids=set(), max_model_len=len(ids) + 6)
    collected = engine.run(ids, max_tokens=6)
    assert collected.tokens() == reference(model, ids, 6)
    assert collected.finish() == "length"
    with pytest.raises(EngineError, match=f"the prompt is {len(ids)} tokens and max_tokens is 7"):
        engine.submit(ids, max_tokens=7)


def test_n_choices_share_the_prompt_and_sample_independently(model, tokenizer, make_engine):
    engine = make_engine(model, eos_ids=set())
    ids = encode(tokenizer, PROMPTS[0])
    greedy = engine.run(ids, max_tokens=12, n=3)
    assert greedy.tokens(0) == greedy.tokens(1) == greedy.tokens(2) == reference(model, ids, 12)
    sampled = engine.run(ids, max_tokens=12, n=3, temperature=1.0, seed=7)
    assert len({tuple(sampled.tokens(i)) for i in range(3)}) > 1
    again = engine.run(ids, max_tokens=12, n=3, temperature=1.0, seed=7)
    assert [again.tokens(i) for i in range(3)] == [sampled.tokens(i) for i in range(3)]


def test_a_seed_gives_the_same_sample_alone_and_in_a_batch(model, tokenizer, make_engine):
    engine = make_engine(model, eos_ids=set())
    ids = encode(tokenizer, PROMPTS[2])
    alone = engine.run(ids, max_tokens=16, temperature=0.9, top_p=0.9, seed=123).tokens()
    others = [
        engine.submit(encode(tokenizer, t), max_tokens=30, temperature=1.0)[1] for t in PROMPTS
    ]
    batched = engine.run(ids, max_tokens=16, temperature=0.9, top_p=0.9, seed=123).tokens()
    for collected in others:
        engine.wait(collected)
    assert batched == alone


def test_cancel_frees_the_slot_at_once(model, tokenizer, make_engine):
    engine = make_engine(model, eos_ids=set(), max_batch_size=2)
    request, collected = engine.submit(encode(tokenizer, PROMPTS[0]), max_tokens=200)
    collected.events.get(timeout=30)
    assert engine.engine.load["free_slots"] == 1
    engine.engine.cancel(request)
    deadline = time.monotonic() + 5
    while engine.engine.load["free_slots"] != 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.engine.load == {"running": 0, "prefilling": 0, "waiting": 0, "free_slots": 2}
    assert collected.finish() is None  # no more output for a request nobody reads


def test_logprobs_are_the_models_log_softmax(model, tokenizer, make_engine):
    import torch

    engine = make_engine(model, eos_ids=set())
    ids = encode(tokenizer, PROMPTS[0])
    collected = engine.run(ids, max_tokens=3, logprobs=2)
    info = [t for d in collected.deltas for t in d.logprobs]
    assert [t.token_id for t in info] == collected.tokens()
    with torch.no_grad():
        logits = model(torch.tensor([ids + collected.tokens()])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    for step, token in enumerate(info):
        row = logp[len(ids) - 1 + step]
        assert token.logprobs.logprob == pytest.approx(row[token.token_id].item(), abs=1e-4)
        top = row.topk(2)
        assert [i for i, _ in token.logprobs.top] == top.indices.tolist()


def test_cuda_graph_shapes_are_powers_of_two_within_the_limits():
    from forgather.serve.cuda_graphs import bucket

    assert [bucket(n, 32) for n in (1, 2, 3, 5, 17, 32)] == [1, 2, 4, 8, 32, 32]
    assert bucket(3, 24) == 4 and bucket(20, 24) == 24
    assert bucket(10, 256, minimum=64) == 64 and bucket(200, 256, minimum=64) == 256


def test_prompts_prefill_together_left_padded_as_if_alone(model, tokenizer):
    import torch

    from forgather.serve.engine import Engine, Request
    from forgather.serve.sampling import SamplingParams

    engine = Engine(model, tokenizer, max_batch_size=4, eos_ids=set())
    prompts = [encode(tokenizer, t) for t in PROMPTS]
    groups = [
        [engine._new_sequence(Request(str(i), ids, SamplingParams(max_tokens=1), print), 0, i)]
        for i, ids in enumerate(prompts)
    ]
    with torch.inference_mode():
        together = engine._prefill_forward(
            [(g, 0, len(ids)) for g, ids in zip(groups, prompts, strict=True)]
        )
        alone = [
            engine._prefill_forward([(g, 0, len(ids))])
            for g, ids in zip(groups, prompts, strict=True)
        ]
        # Prefill in two chunks per prompt: the second chunk starts from the cached first half.
        halves = [len(ids) // 2 for ids in prompts]
        engine._prefill_forward([(g, 0, h) for g, h in zip(groups, halves, strict=True)])
        second = engine._prefill_forward(
            [(g, h, len(ids) - h) for g, h, ids in zip(groups, halves, prompts, strict=True)]
        )
    expected = torch.cat(alone)
    assert torch.allclose(together, expected, atol=1e-5)
    assert torch.allclose(second, expected, atol=1e-5)


@pytest.mark.parametrize(
    "make_model",
    [
        pytest.param(lambda: forgather_model(sliding_window=8), id="forgather"),
        pytest.param(lambda: mistral_model(sliding_window=8), id="mistral"),
    ],
)
def test_a_sliding_window_model_is_served_as_generate_computes_it(
    make_model, tokenizer, make_engine
):
    """Prompts and completions longer than the 8-token window, prefilled in chunks of 5 and
    decoded together: token for token what generate() gives (which, without the window in the
    engine's masks, it would not: the completions differ from the full-attention ones)."""
    model = make_model()
    engine = make_engine(model, eos_ids=set(), prefill_chunk=5)
    prompts = [encode(tokenizer, t) for t in PROMPTS]
    lengths = [20, 9, 14, 17]
    submitted = [
        engine.submit(ids, max_tokens=n)[1] for ids, n in zip(prompts, lengths, strict=True)
    ]
    for ids, n, collected in zip(prompts, lengths, submitted, strict=True):
        engine.wait(collected)
        assert collected.tokens() == reference(model, ids, n)
    model.config.sliding_window = None
    full_attention = [reference(model, ids, n) for ids, n in zip(prompts, lengths, strict=True)]
    assert full_attention != [c.tokens() for c in submitted]


def test_a_model_mixing_full_and_sliding_layers_is_refused(tokenizer):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from forgather.serve.engine import Engine

    config = Qwen3Config(
        vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, use_sliding_window=True,
        sliding_window=8, max_window_layers=1,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"mixes attention kinds across layers"):
        Engine(Qwen3ForCausalLM(config).eval(), tokenizer)
