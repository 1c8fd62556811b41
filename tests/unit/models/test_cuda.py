"""CUDA-only checks: compiled flex attention (forward and backward), bf16 training, generation."""

from __future__ import annotations

import pytest
import torch

from .conftest import VOCAB, tiny_model, with_backend

pytestmark = [
    pytest.mark.unit,
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

BACKENDS = ("eager", "sdpa", "flex")
# head_dim 16: the smallest the fused (compiled) flex kernel takes
CUDA_MODEL = dict(hidden_size=64, intermediate_size=128)


def cuda_model(**overrides):
    return tiny_model(**CUDA_MODEL, **overrides).cuda()


@pytest.fixture(autouse=True)
def _exact_matmuls():
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def _packed_batch(device):
    ids = torch.randint(3, VOCAB, (3, 40), device=device)
    position_ids = torch.tensor(
        [
            list(range(15)) + list(range(25)),
            list(range(40)),
            list(range(10)) + list(range(10)) + list(range(20)),
        ],
        device=device,
    )
    mask = torch.ones(3, 40, dtype=torch.long, device=device)
    mask[1, 33:] = 0
    return ids, position_ids, mask


@pytest.mark.parametrize("positional", ["rope", "alibi"])
def test_backends_agree_forward_and_backward_on_cuda(positional):
    model = cuda_model(positional_encoding=positional, qk_norm=True).train()
    ids, position_ids, mask = _packed_batch("cuda")
    logits, grads = {}, {}
    for backend in BACKENDS:
        with_backend(model, backend)
        model.zero_grad()
        out = model(ids, position_ids=position_ids, attention_mask=mask, labels=ids)
        out.loss.backward()
        logits[backend] = out.logits.detach()
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for backend in ("sdpa", "flex"):
        torch.testing.assert_close(logits[backend], logits["eager"], atol=1e-4, rtol=1e-4)
        for name, grad in grads[backend].items():
            torch.testing.assert_close(grad, grads["eager"][name], atol=1e-4, rtol=1e-3, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_isolation_on_cuda(backend):
    model = cuda_model(attention_backend=backend)
    docs = [torch.randint(3, VOCAB, (1, n), device="cuda") for n in (7, 13)]
    positions = torch.cat([torch.arange(7), torch.arange(13)])[None].cuda()
    with torch.no_grad():
        packed = model(torch.cat(docs, 1), position_ids=positions).logits
        alone = torch.cat([model(d).logits for d in docs], 1)
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_checkpointed_training_step(backend):
    model = cuda_model(attention_backend=backend, activation_checkpointing=True)
    model = model.to(torch.bfloat16).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids, position_ids, mask = _packed_batch("cuda")
    losses = []
    for _ in range(3):
        loss = model(ids, position_ids=position_ids, attention_mask=mask, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_generation_with_cache_on_cuda(backend):
    model = cuda_model(attention_backend=backend)
    prompt = torch.randint(3, VOCAB, (2, 6), device="cuda")
    kwargs = dict(max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        cached = model.generate(prompt, use_cache=True, **kwargs)
        recomputed = model.generate(prompt, use_cache=False, **kwargs)
    assert torch.equal(cached, recomputed)


def test_flex_small_head_dim_uses_the_unfused_kernel_on_cuda():
    model = tiny_model(attention_backend="flex").cuda().train()  # head_dim 8
    ids, position_ids, mask = _packed_batch("cuda")
    loss = model(ids, position_ids=position_ids, attention_mask=mask, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and model.lm_head.weight.grad is not None


def test_finalize_quantize_int4_loads_and_generates_on_cuda(tmp_path):
    """`finalize --quantize int4 --device cuda`: tile-packed int4 weights, bf16 compute; the
    directory loads quantised with transformers and stays close to the bf16 model."""
    pytest.importorskip("torchao.quantization", reason="--quantize needs torchao")
    from transformers import AutoModelForCausalLM

    from forgather.ml.models.finalize import finalize
    from forgather.ml.models.save import save_model_dir

    model = tiny_model(hidden_size=256, intermediate_size=512, num_attention_heads=4)
    save_model_dir(model, tmp_path / "src")
    done = finalize(tmp_path / "src", tmp_path / "int4", quantize="int4", group_size=64,
                    device="cuda")  # fmt: skip
    assert done.quantize == "int4" and done.dtype == "bfloat16" and 0 < done.max_abs_diff < 0.5
    loaded = AutoModelForCausalLM.from_pretrained(
        tmp_path / "int4", trust_remote_code=True, device_map="cuda"
    ).eval()
    assert "Int4" in type(loaded.model.layers[0].mlp.up_proj.weight).__name__
    ids = torch.tensor([[1, 5, 9, 13, 40, 41, 42]], device="cuda")
    with torch.no_grad():
        out = loaded.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 12)
