"""Loss, tied weights, activation checkpointing, init schemes and config handling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from forgather.ml.models.transformer import ForgatherConfig, ForgatherForCausalLM

from .conftest import VOCAB, backend_param, tiny_config, tiny_model

pytestmark = pytest.mark.unit


# ---------------------------------------------------------------- loss and outputs


def test_loss_is_shifted_cross_entropy_ignoring_minus_100():
    model = tiny_model()
    ids = torch.randint(3, VOCAB, (2, 8))
    labels = ids.clone()
    labels[0, 5:] = -100
    out = model(ids, labels=labels)
    logits = out.logits
    expected = F.cross_entropy(
        logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, expected)
    counted = int((labels[:, 1:] != -100).sum())
    summed = model(ids, labels=labels, num_items_in_batch=2 * counted).loss
    torch.testing.assert_close(summed, expected / 2)


def test_logits_to_keep_and_return_hidden_states():
    model = tiny_model()
    ids = torch.randint(3, VOCAB, (2, 8))
    with torch.no_grad():
        full = model(ids).logits
        last = model(ids, logits_to_keep=1).logits
        hidden = model(ids, return_hidden_states=True)
    torch.testing.assert_close(last, full[:, -1:])
    assert hidden.logits is None and hidden.loss is None
    torch.testing.assert_close(model.lm_head(hidden.last_hidden_state), full)


def test_return_dict_false_gives_tuple():
    model = tiny_model()
    ids = torch.randint(3, VOCAB, (1, 5))
    out = model(ids, labels=ids, return_dict=False, use_cache=False)
    assert isinstance(out, tuple) and out[0].ndim == 0 and out[1].shape == (1, 5, VOCAB)


def test_inputs_embeds_equal_input_ids():
    model = tiny_model(embedding_scale=math.sqrt(32))
    ids = torch.randint(3, VOCAB, (2, 6))
    with torch.no_grad():
        a = model(ids).logits
        b = model(inputs_embeds=model.get_input_embeddings()(ids)).logits
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="exactly one"):
        model()


# ---------------------------------------------------------------- tied weights


def test_tied_weights_share_storage():
    model = tiny_model(tie_word_embeddings=True)
    head, embed = model.lm_head.weight, model.model.embed_tokens.weight
    assert head is embed and head.data_ptr() == embed.data_ptr()
    ids = torch.randint(3, VOCAB, (2, 6))
    model.train()
    model(ids, labels=ids).loss.backward()
    assert model.lm_head.weight.grad is model.model.embed_tokens.weight.grad


def test_untied_weights_are_separate():
    model = tiny_model(tie_word_embeddings=False)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


# ---------------------------------------------------------------- activation checkpointing


def _grads(model, ids):
    model.train()
    model.zero_grad()
    model(ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "backend", [backend_param(b, needs_backward=True) for b in ("eager", "sdpa", "flex")]
)
@pytest.mark.parametrize("layer_type", ["pre_ln", "deepnet"])
def test_activation_checkpointing_gives_identical_gradients(backend, layer_type):
    ids = torch.randint(3, VOCAB, (2, 10))
    plain = tiny_model(attention_backend=backend, layer_type=layer_type)
    checkpointed = tiny_model(
        attention_backend=backend, layer_type=layer_type, activation_checkpointing=True
    )
    assert checkpointed.model.gradient_checkpointing
    reference = _grads(plain, ids)
    got = _grads(checkpointed, ids)
    assert reference.keys() == got.keys()
    for name in reference:
        torch.testing.assert_close(got[name], reference[name], atol=1e-6, rtol=1e-5, msg=name)


def test_hf_checkpointing_switch_toggles_the_model():
    model = tiny_model()
    enable = (
        getattr(model, "activation_checkpointing_enable", None)
        or model.gradient_checkpointing_enable
    )
    enable()
    assert model.model.gradient_checkpointing
    ids = torch.randint(3, VOCAB, (2, 10))
    checkpointed = _grads(model, ids)
    disable = (
        getattr(model, "activation_checkpointing_disable", None)
        or model.gradient_checkpointing_disable
    )
    disable()
    assert not model.model.gradient_checkpointing
    reference = _grads(model, ids)
    for name in reference:
        torch.testing.assert_close(checkpointed[name], reference[name], atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- init schemes


def _std(linear):
    return linear.weight.std().item()


def test_init_schemes():
    big = dict(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=4,
    )
    normal = tiny_model(init_scheme="normal", initializer_range=0.02, **big)
    attn = normal.model.layers[0].self_attn
    assert _std(attn.q_proj) == pytest.approx(0.02, rel=0.05)
    assert _std(attn.o_proj) == pytest.approx(0.02, rel=0.05)
    assert normal.model.embed_tokens.weight.std().item() == pytest.approx(0.02, rel=0.1)

    scaled = tiny_model(init_scheme="scaled", initializer_range=0.02, **big)
    layer = scaled.model.layers[0]
    assert _std(layer.self_attn.q_proj) == pytest.approx(0.02, rel=0.05)
    assert _std(layer.self_attn.o_proj) == pytest.approx(0.02 / 4, rel=0.05)  # sqrt(2 * 8) = 4
    assert _std(layer.mlp.down_proj) == pytest.approx(0.02 / 4, rel=0.05)

    small = tiny_model(init_scheme="small_init", **big)
    layer = small.model.layers[0]
    assert _std(layer.self_attn.q_proj) == pytest.approx(math.sqrt(2 / (5 * 256)), rel=0.05)
    assert _std(layer.self_attn.o_proj) == pytest.approx(2 / (8 * 16), rel=0.05)

    deep = tiny_model(layer_type="deepnet", **big)
    assert deep.config.init_scheme == "deepnet"
    layer = deep.model.layers[0]
    beta = (8 * 8) ** -0.25
    xavier = math.sqrt(2 / (256 + 256))
    assert _std(layer.self_attn.q_proj) == pytest.approx(xavier, rel=0.05)
    assert _std(layer.self_attn.v_proj) == pytest.approx(beta * xavier, rel=0.05)
    assert _std(layer.mlp.down_proj) == pytest.approx(beta * math.sqrt(2 / (256 + 512)), rel=0.05)
    assert layer.residual_scale == pytest.approx((2 * 8) ** 0.25)
    for norm in (layer.attn_norm, layer.mlp_norm):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))


def test_deepnet_overrides_and_post_ln_has_no_final_norm():
    cfg = tiny_config(layer_type="deepnet", deepnet_alpha=3.0, deepnet_beta=0.5)
    assert cfg.deepnet_alpha_value == 3.0 and cfg.deepnet_beta_value == 0.5
    model = ForgatherForCausalLM(cfg)
    assert model.model.layers[1].residual_scale == 3.0
    assert isinstance(model.model.norm, torch.nn.Identity)
    assert isinstance(tiny_model(layer_type="post_ln").model.norm, torch.nn.Identity)


# ---------------------------------------------------------------- config


def test_config_defaults_and_validation():
    cfg = ForgatherConfig(hidden_size=96, num_attention_heads=3)
    assert cfg.head_dim == 32 and cfg.num_key_value_heads == 3
    assert cfg.intermediate_size == 256 and cfg.hidden_act == "silu"
    assert (
        ForgatherConfig(feedforward="mlp", hidden_size=64, num_attention_heads=4).hidden_act
        == "gelu"
    )
    for bad in (
        dict(norm="batchnorm"),
        dict(layer_type="sandwich"),
        dict(feedforward="moe"),
        dict(positional_encoding="relative"),
        dict(attention_backend="flash"),
        dict(init_scheme="zeros"),
        dict(num_key_value_heads=3),
        dict(hidden_size=30, num_attention_heads=4),
    ):
        with pytest.raises(ValueError):
            ForgatherConfig(**{"hidden_size": 32, "num_attention_heads": 4, **bad})


def test_config_json_round_trip(tmp_path):
    cfg = tiny_config(
        rope_scaling={"type": "yarn", "factor": 4.0},
        layer_type="deepnet",
        qk_norm=True,
        attention_backend="eager",
        tie_word_embeddings=True,
    )
    cfg.save_pretrained(tmp_path)
    loaded = ForgatherConfig.from_pretrained(tmp_path)
    for key in (
        "rope_scaling",
        "layer_type",
        "qk_norm",
        "attention_backend",
        "tie_word_embeddings",
        "num_key_value_heads",
        "head_dim",
        "init_scheme",
        "pad_token_id",
    ):
        assert getattr(loaded, key) == getattr(cfg, key), key
    assert loaded.rope_scaling["original_max_position_embeddings"] == 64


def test_checkpointing_every_kth_layer_recomputes_only_those_with_identical_gradients():
    ids = torch.randint(3, VOCAB, (2, 10))
    plain = tiny_model(num_hidden_layers=4)
    every_second = tiny_model(num_hidden_layers=4, activation_checkpointing=True)
    every_second.model.gradient_checkpointing_every = 2
    calls = [0] * 4
    for index, layer in enumerate(every_second.model.layers):
        layer.register_forward_pre_hook(lambda *_, i=index: calls.__setitem__(i, calls[i] + 1))
    reference = _grads(plain, ids)
    got = _grads(every_second, ids)
    assert calls == [2, 1, 2, 1]  # layers 0 and 2 ran again in the backward pass
    for name in reference:
        torch.testing.assert_close(got[name], reference[name], atol=1e-6, rtol=1e-5, msg=name)
