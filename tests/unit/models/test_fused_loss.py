"""The fused linear + cross-entropy loss equals the plain loss over the logits, in value and in the
gradients of the hidden states, the head's weight and bias, without holding the logits."""

from __future__ import annotations

import pytest
import torch

from forgather.ml.models.transformer.loss import (
    causal_lm_loss,
    chunk_tokens_for,
    linear_cross_entropy,
    resolve_impl,
)


def _case(vocab: int, dim: int = 16, batch: int = 3, seq: int = 11, bias: bool = False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, seq, dim, generator=generator, requires_grad=True)
    weight = torch.randn(vocab, dim, generator=generator).mul_(0.3).requires_grad_()
    b = torch.randn(vocab, generator=generator).requires_grad_() if bias else None
    labels = torch.randint(0, vocab, (batch, seq), generator=generator)
    labels[0, :4] = -100  # padding: not counted
    labels[2, 7] = -100
    return hidden, weight, b, labels


def _plain(hidden, weight, bias, labels, **kwargs):
    logits = hidden @ weight.T + (bias if bias is not None else 0)
    return causal_lm_loss(logits, labels, **kwargs)


def _grads(loss, *tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


@pytest.mark.parametrize("vocab", [7, 64, 1000])
@pytest.mark.parametrize("chunk", [1, 5, 33, 4096])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_value_and_gradients_equal_the_plain_loss(vocab, chunk, smoothing):
    hidden, weight, _, labels = _case(vocab)
    plain = _plain(hidden, weight, None, labels, label_smoothing=smoothing)
    fused = linear_cross_entropy(
        hidden, weight, labels, impl="torch", chunk_tokens=chunk, label_smoothing=smoothing
    )
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-6)
    for got, want in zip(_grads(fused, hidden, weight), _grads(plain, hidden, weight), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_bias_and_a_sum_over_the_batchs_items_are_supported():
    hidden, weight, bias, labels = _case(50, bias=True)
    items = torch.tensor(40)
    plain = _plain(hidden, weight, bias, labels, num_items_in_batch=items)
    fused = linear_cross_entropy(
        hidden, weight, labels, bias=bias, num_items_in_batch=items, impl="torch", chunk_tokens=8
    )
    torch.testing.assert_close(fused, plain)
    for got, want in zip(
        _grads(fused * 3, hidden, weight, bias),
        _grads(plain * 3, hidden, weight, bias),  # an upstream gradient that is not 1
        strict=True,
    ):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_tied_head_gets_the_gradient_of_both_uses():
    """The head's weight is the embedding: the loss's gradient adds to the embedding's."""
    generator = torch.Generator().manual_seed(3)
    embedding = torch.randn(40, 8, generator=generator, requires_grad=True)
    ids = torch.randint(0, 40, (2, 9), generator=generator)

    def run(fused: bool):
        hidden = torch.tanh(embedding[ids])
        if fused:
            return linear_cross_entropy(hidden, embedding, ids, impl="torch", chunk_tokens=4)
        return causal_lm_loss(hidden @ embedding.T, ids)

    (fused,) = torch.autograd.grad(run(True), embedding)
    (plain,) = torch.autograd.grad(run(False), embedding)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_stays_within_bf16_tolerance_of_float32():
    hidden, weight, _, labels = _case(300, dim=32)
    plain = _plain(hidden, weight, None, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = linear_cross_entropy(hidden, weight, labels, impl="torch", chunk_tokens=16)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, plain, rtol=2e-2, atol=2e-2)
    got = _grads(fused, hidden, weight)
    want = _grads(plain, hidden, weight)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=5e-2, atol=5e-3)


def test_without_gradients_only_the_value_is_computed():
    hidden, weight, _, labels = _case(64)
    with torch.no_grad():
        fused = linear_cross_entropy(hidden, weight, labels, impl="torch", chunk_tokens=7)
        plain = _plain(hidden, weight, None, labels)
    assert not fused.requires_grad
    torch.testing.assert_close(fused, plain)


def test_the_backend_is_chosen_by_name_and_checked():
    assert resolve_impl("torch", torch.device("cpu")) == "torch"
    assert resolve_impl("auto", torch.device("cpu")) == "torch"  # liger runs on CUDA only
    with pytest.raises(ValueError, match="liger fused loss runs on CUDA only"):
        resolve_impl("liger", torch.device("cpu"))
    with pytest.raises(ValueError, match=r"must be one of \('auto', 'torch', 'liger'\)"):
        resolve_impl("triton", torch.device("cpu"))
    # a chunk's float32 logits and gradient stay near the budget, never below 256 tokens
    assert chunk_tokens_for(32000) == 1024 and chunk_tokens_for(128256) == 256


def test_a_forgather_model_computes_its_fused_loss_without_logits():
    from tests.unit.train._tiny import tiny_forgather

    torch.manual_seed(0)
    model = tiny_forgather()
    ids = torch.randint(0, 256, (2, 16))
    plain = model(input_ids=ids, labels=ids)
    fused = model(input_ids=ids, labels=ids, loss_impl="torch")
    assert fused.logits is None
    torch.testing.assert_close(fused.loss, plain.loss)
    (g_fused,) = torch.autograd.grad(fused.loss, model.lm_head.weight)
    (g_plain,) = torch.autograd.grad(plain.loss, model.lm_head.weight)
    torch.testing.assert_close(g_fused, g_plain, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", ["torch", "liger"])
def test_on_cuda_each_backend_equals_the_plain_loss_in_bf16(impl):
    from forgather.ml.models.transformer.loss import liger_available

    if impl == "liger" and not liger_available():
        pytest.skip("liger-kernel is not installed")
    hidden, weight, _, labels = _case(32000, dim=256, batch=4, seq=128)
    hidden = hidden.detach().cuda().requires_grad_()
    weight = weight.detach().cuda().requires_grad_()
    labels = labels.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        plain = _plain(hidden, weight, None, labels)
        fused = linear_cross_entropy(hidden, weight, labels, impl=impl)
    torch.testing.assert_close(fused.float(), plain.float(), rtol=1e-2, atol=1e-2)
    for got, want in zip(_grads(fused, hidden, weight), _grads(plain, hidden, weight), strict=True):
        torch.testing.assert_close(got.float(), want.float(), rtol=5e-2, atol=2e-3)
