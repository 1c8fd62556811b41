"""Causality, packed-document isolation, padding, backend agreement and GQA."""

from __future__ import annotations

import copy

import pytest
import torch

from forgather.ml.models.transformer.attention import (
    build_attention_mask,
    document_ids,
)

from .conftest import ALL_BACKENDS, VOCAB, tiny_model, with_backend

pytestmark = pytest.mark.unit

POSITIONAL = ("rope", "alibi", "sinusoidal", "none")
ATOL = 2e-5


def test_document_ids_from_position_resets():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5], [3, 4, 5, 0, 1, 2]])
    docs = document_ids(pos)
    assert docs.tolist() == [[0, 0, 0, 1, 1, 2], [0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1]]
    assert document_ids(torch.arange(6)[None]) is None
    assert document_ids(torch.tensor([[7]])) is None


def test_dense_mask_is_block_diagonal_causal():
    pos = torch.tensor([[0, 1, 2, 0, 1]])
    mask = build_attention_mask((1, 5), 0, torch.device("cpu"), None, pos).dense()[0, 0]
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [0, 0, 0, 1, 0],
            [0, 0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)


def test_mask_with_padding_and_cache():
    # 2 cached keys, 2 new queries, first key is padding.
    am = torch.tensor([[0, 1, 1, 1]])
    mask = build_attention_mask((1, 2), 2, torch.device("cpu"), am, None)
    assert not mask.causal_only and mask.doc_ids is None  # no document masks with a cache
    assert mask.dense()[0, 0].tolist() == [[False, True, True, False], [False, True, True, True]]
    plain = build_attention_mask((1, 3), 0, torch.device("cpu"), torch.ones(1, 3), None)
    assert plain.causal_only


@pytest.mark.parametrize("positional", POSITIONAL)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_future_tokens_do_not_change_past_logits(backend, positional):
    model = tiny_model(attention_backend=backend, positional_encoding=positional)
    ids = torch.randint(3, VOCAB, (2, 12))
    changed = ids.clone()
    changed[:, 7:] = torch.randint(3, VOCAB, (2, 5))
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :7], b[:, :7], atol=ATOL, rtol=0)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


@pytest.mark.parametrize("positional", POSITIONAL)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_packed_documents_are_isolated(backend, positional):
    """A packed row gives, per document, the logits of that document run alone."""
    model = tiny_model(attention_backend=backend, positional_encoding=positional)
    lengths = (5, 3, 6)
    docs = [torch.randint(3, VOCAB, (1, n)) for n in lengths]
    packed = torch.cat(docs, dim=1)
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    with torch.no_grad():
        packed_logits = model(packed, position_ids=position_ids).logits
        alone = [model(doc).logits for doc in docs]
    torch.testing.assert_close(packed_logits, torch.cat(alone, dim=1), atol=ATOL, rtol=0)


@pytest.mark.parametrize("positional", POSITIONAL)
def test_backends_agree_on_packed_padded_batch(positional):
    """eager, sdpa and flex give the same logits on packed rows with padding."""
    model = tiny_model(positional_encoding=positional)
    ids = torch.randint(3, VOCAB, (3, 10))
    position_ids = torch.tensor(
        [[0, 1, 2, 3, 0, 1, 2, 0, 1, 2], list(range(10)), [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]]
    )
    attention_mask = torch.ones(3, 10, dtype=torch.long)
    attention_mask[2, 8:] = 0  # right padding on the last row
    backends = ["eager", "sdpa"]
    from .conftest import flex_skip_reason

    if flex_skip_reason() is None:
        backends.append("flex")
    outs = {}
    for backend in backends:
        with torch.no_grad():
            outs[backend] = with_backend(model, backend)(
                ids, position_ids=position_ids, attention_mask=attention_mask
            ).logits
    for backend in backends[1:]:
        torch.testing.assert_close(outs[backend], outs["eager"], atol=ATOL, rtol=0)
    assert torch.isfinite(outs["eager"]).all()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_left_padding_matches_unpadded(backend):
    model = tiny_model(attention_backend=backend)
    ids = torch.randint(3, VOCAB, (1, 6))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        ref = model(ids).logits
        out = model(padded, attention_mask=mask).logits
    torch.testing.assert_close(out[:, 3:], ref, atol=ATOL, rtol=0)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_gqa_equals_mha_with_copied_weights(backend):
    """GQA (2 kv heads for 4 query heads) equals MHA whose k/v heads repeat the shared ones."""
    gqa = tiny_model(num_key_value_heads=2, attention_backend=backend)
    mha = tiny_model(seed=1, num_key_value_heads=4, attention_backend=backend)
    state = copy.deepcopy(gqa.state_dict())
    head_dim, groups = gqa.config.head_dim, 2
    for key, value in list(state.items()):
        if key.endswith(("k_proj.weight", "v_proj.weight")):
            heads = value.view(-1, head_dim, value.shape[-1])  # (kv_heads, head_dim, hidden)
            state[key] = heads.repeat_interleave(groups, dim=0).reshape(-1, value.shape[-1])
    mha.load_state_dict(state)
    ids = torch.randint(3, VOCAB, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(mha(ids).logits, gqa(ids).logits, atol=ATOL, rtol=0)


def test_kv_heads_default_to_heads():
    model = tiny_model(num_key_value_heads=None)
    attn = model.model.layers[0].self_attn
    assert attn.num_kv_heads == attn.num_heads == 4
    assert attn.k_proj.weight.shape == attn.q_proj.weight.shape


def test_output_attentions_rows_sum_to_one_and_are_causal():
    model = tiny_model(attention_backend="sdpa")
    ids = torch.randint(3, VOCAB, (1, 6))
    with torch.no_grad():
        out = model(ids, output_attentions=True)
    assert len(out.attentions) == 2
    weights = out.attentions[0]
    assert weights.shape == (1, 4, 6, 6)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 4, 6))
    assert (weights.triu(diagonal=1) == 0).all()


def test_sliding_window_mask_keeps_the_last_w_keys():
    mask = build_attention_mask((1, 5), 0, torch.device("cpu"), window=3)
    assert not mask.causal_only
    assert mask.dense()[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [0, 0, 1, 1, 1],
    ]
    # decoding on a cache of 4: the new query sees keys 2..4
    step = build_attention_mask((1, 1), 4, torch.device("cpu"), window=3)
    assert step.dense()[0, 0].int().tolist() == [[0, 0, 1, 1, 1]]
    # what a sliding cache returns (the last 3 keys) is the same view
    assert step.for_keys(3).dense()[0, 0].int().tolist() == [[1, 1, 1]]
    assert build_attention_mask((1, 3), 0, torch.device("cpu"), window=3).causal_only
    with pytest.raises(RuntimeError, match="2 keys but the mask expects 5"):
        build_attention_mask((1, 5), 0, torch.device("cpu")).for_keys(2)


@pytest.mark.parametrize("positional", ("rope", "alibi"))
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_sliding_window_hides_keys_further_back(backend, positional):
    """With a window of 4 over 2 layers, position 11 sees back to position 11 - 2*3 = 5: a token
    before it changes nothing there, a token within it does; packed rows agree with documents
    run alone."""
    model = tiny_model(attention_backend=backend, positional_encoding=positional, sliding_window=4)
    ids = torch.randint(3, VOCAB, (2, 12))
    far, near = ids.clone(), ids.clone()
    far[:, 4] = (ids[:, 4] + 1) % VOCAB
    near[:, 6] = (ids[:, 6] + 1) % VOCAB
    lengths = (7, 5)
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None].expand(2, -1)
    with torch.no_grad():
        base = model(ids).logits
        torch.testing.assert_close(model(far).logits[:, 11], base[:, 11], atol=ATOL, rtol=0)
        assert not torch.allclose(model(near).logits[:, 11], base[:, 11])
        packed = model(ids, position_ids=position_ids).logits
        alone = [model(ids[:, :7]).logits, model(ids[:, 7:]).logits]
    torch.testing.assert_close(packed, torch.cat(alone, dim=1), atol=ATOL, rtol=0)


def test_sliding_window_must_be_a_positive_count():
    from forgather.ml.models.transformer import ForgatherConfig

    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="sliding_window must be a positive number of tokens"):
            ForgatherConfig(sliding_window=bad)
