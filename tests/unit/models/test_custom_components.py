"""Components of the user's own (attention, feed-forward, norm, layer type) by class: the config
stores their key, the model builds them, a saved directory carries their source, and forgather
loads such a directory in a fresh process from that source. (Loading where forgather is not
installed: test_remote_code_venv.py.)"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from forgather.config.specs import load_file_module
from forgather.ml.models.factory import build_model
from forgather.ml.models.loading import UntrustedCodeError, load_causal_lm
from forgather.ml.models.save import save_model_dir
from forgather.ml.models.transformer import ForgatherConfig
from forgather.ml.models.transformer.custom_components import CUSTOM_COMPONENTS

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = load_file_module(str(REPO / "examples" / "custom_attention" / "cosine_attention.py"))
SIZE = dict(
    vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
)  # fmt: skip
IDS = torch.tensor([[5, 17, 33, 2, 9, 41, 60, 11], [7, 7, 81, 23, 50, 3, 19, 92]])

OWN_LAYERS = '''
import torch
from torch import nn


class GatedMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.up = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        value, gate = self.up(x).chunk(2, dim=-1)
        return self.down(value * torch.sigmoid(gate))


class ParallelLayer(nn.Module):
    """GPT-J style: attention and MLP read the same normed input."""

    final_norm = True

    def __init__(self, config, layer_idx):
        super().__init__()
        from_config = type(config).__module__.rpartition(".")[0]
        import importlib

        layers = importlib.import_module(from_config + ".layers")
        norms = importlib.import_module(from_config + ".norms")
        self.self_attn = layers.make_attention(config, layer_idx)
        self.mlp = layers.make_feedforward(config)
        self.norm = norms.make_norm(config.norm, config.hidden_size, config.norm_eps)

    def forward(self, hidden_states, rotary, mask, cache=None, output_attentions=False):
        normed = self.norm(hidden_states)
        attn, weights = self.self_attn(normed, rotary, mask, cache, output_attentions)
        return hidden_states + attn + self.mlp(normed), weights
'''


def test_a_class_is_stored_by_its_key_and_built_into_every_layer():
    model = build_model(
        preset="tiny_llama_4m", attention=EXAMPLE.CosineAttention, norm=EXAMPLE.ScaleNorm, **SIZE
    )
    assert model.config.attention == "cosine_attention:CosineAttention"
    assert model.config.norm == "cosine_attention:ScaleNorm"
    assert json.loads(model.config.to_json_string())["attention"] == model.config.attention
    assert all(type(layer.self_attn) is EXAMPLE.CosineAttention for layer in model.model.layers)
    assert type(model.model.norm) is EXAMPLE.ScaleNorm
    loss = model(input_ids=IDS, labels=IDS).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(layer.self_attn.log_temperature.grad is not None for layer in model.model.layers)


def test_generation_with_the_cache_equals_the_full_forward():
    torch.manual_seed(0)
    model = build_model(preset="tiny_llama_4m", attention=EXAMPLE.CosineAttention, **SIZE).eval()
    generated = model.generate(IDS[:, :4], max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():  # greedy again without a cache: the cached path must agree
        ids = IDS[:, :4]
        for _ in range(6):
            next_id = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_id], dim=1)
    assert torch.equal(generated, ids)


def test_a_saved_directory_carries_the_source_and_loads_in_a_fresh_process(tmp_path):
    own = tmp_path / "own_layers.py"
    own.write_text(OWN_LAYERS)
    layers = load_file_module(str(own))
    torch.manual_seed(0)
    model = build_model(
        preset="tiny_llama_4m",
        attention=EXAMPLE.CosineAttention,
        feedforward=functools.partial(layers.GatedMLP),
        layer_type=layers.ParallelLayer,
        **SIZE,
    ).eval()
    out = save_model_dir(model, tmp_path / "saved")
    assert (out / "cosine_attention.py").read_text() == (
        REPO / "examples" / "custom_attention" / "cosine_attention.py"
    ).read_text()
    assert (out / "own_layers.py").is_file()
    registry = (out / "custom_components.py").read_text()
    assert "from .own_layers import GatedMLP" in registry
    assert "'own_layers:ParallelLayer': ParallelLayer" in registry
    with torch.no_grad():
        expected = model(IDS).logits
    torch.save(expected, tmp_path / "expected.pt")
    child = textwrap.dedent(
        f"""
        import sys, torch
        from forgather.ml.models.transformer.custom_components import CUSTOM_COMPONENTS
        assert not CUSTOM_COMPONENTS, CUSTOM_COMPONENTS
        from forgather.ml.models.loading import load_causal_lm
        model, _, _ = load_causal_lm({str(out)!r}, require_tokenizer=False)
        with torch.no_grad():
            logits = model(torch.tensor({IDS.tolist()!r})).logits
        torch.testing.assert_close(logits, torch.load({str(tmp_path / "expected.pt")!r}))
        print(sorted(CUSTOM_COMPONENTS))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", child], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "own_layers:ParallelLayer" in done.stdout


def test_loading_without_trusting_the_code_refuses_and_names_the_components(tmp_path):
    model = build_model(preset="tiny_llama_4m", norm=EXAMPLE.ScaleNorm, **SIZE)
    out = save_model_dir(model, tmp_path / "saved")
    CUSTOM_COMPONENTS.pop("cosine_attention:ScaleNorm")  # as in a fresh process
    try:
        with pytest.raises(UntrustedCodeError, match="cosine_attention:ScaleNorm"):
            load_causal_lm(out, trust_remote_code=False, require_tokenizer=False)
    finally:
        CUSTOM_COMPONENTS["cosine_attention:ScaleNorm"] = EXAMPLE.ScaleNorm


def test_an_unknown_key_names_the_field_and_how_to_give_the_class():
    config = ForgatherConfig(attention="nowhere:Attention", **SIZE)
    with pytest.raises(ValueError, match=r"attention='nowhere:Attention' is neither a built-in"):
        build_model(config=config)
    with pytest.raises(ValueError, match=r"norm must be one of rmsnorm, layernorm"):
        ForgatherConfig(norm="batchnorm", **SIZE)


def test_arguments_a_component_cannot_keep_are_refused():
    with pytest.raises(ValueError, match="its options go in the model config"):
        ForgatherConfig(norm=functools.partial(EXAMPLE.ScaleNorm, eps=1e-3), **SIZE)
    with pytest.raises(ValueError, match="must be a built-in name or a class"):
        ForgatherConfig(feedforward=lambda config: nn.Identity(), **SIZE)


def test_a_file_named_like_a_model_file_is_refused(tmp_path):
    (tmp_path / "norms.py").write_text("from torch import nn\nclass Norm(nn.LayerNorm): pass\n")
    with pytest.raises(ValueError, match="norms.py, a name forgather's own model files use"):
        ForgatherConfig(norm=load_file_module(str(tmp_path / "norms.py")).Norm, **SIZE)


TWIN = """
import torch
from torch import nn


class ScaleNorm(nn.Module):  # another version of the example's: a fixed gain of 2
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps

    def forward(self, x):
        return 2.0 * x / x.norm(dim=-1, keepdim=True).clamp(min=self.eps)
"""


def test_two_versions_of_one_component_each_stay_with_their_model(tmp_path):
    """Same key, different code (an edited project file, an older saved model): a model is saved
    with the class it was built with, and a directory loads with its own copy."""
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "cosine_attention.py").write_text(TWIN)
    twin = load_file_module(str(tmp_path / "v2" / "cosine_attention.py")).ScaleNorm
    torch.manual_seed(0)
    first = build_model(preset="tiny_llama_4m", norm=EXAMPLE.ScaleNorm, **SIZE).eval()
    second = build_model(preset="tiny_llama_4m", norm=twin, **SIZE).eval()
    assert CUSTOM_COMPONENTS["cosine_attention:ScaleNorm"] is twin  # the latest wins
    saved = save_model_dir(first, tmp_path / "first")  # built with the example's version
    assert (saved / "cosine_attention.py").read_text() == (
        REPO / "examples" / "custom_attention" / "cosine_attention.py"
    ).read_text()
    with torch.no_grad():
        expected = first(IDS).logits
    loaded, _, _ = load_causal_lm(saved, require_tokenizer=False)  # registered: the twin
    assert type(loaded.model.norm).__name__ == "ScaleNorm" and hasattr(loaded.model.norm, "gain")
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, expected)
    assert type(second.model.norm) is twin


def test_converting_to_hugging_face_names_the_components_it_cannot_express(tmp_path):
    from forgather.ml.convert.convert import convert
    from forgather.ml.convert.registry import UnsupportedFeature

    model = build_model(preset="tiny_llama_4m", attention=EXAMPLE.CosineAttention, **SIZE)
    out = save_model_dir(model, tmp_path / "saved")
    with pytest.raises(UnsupportedFeature, match="attention=cosine_attention:CosineAttention"):
        convert(out, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


# ---- the slots beyond the layer: positional encoding, input encoder, init function

SLOTS = load_file_module(str(REPO / "tests" / "fixtures" / "components" / "own_slots.py"))


def test_a_rotary_module_of_your_own_is_applied_to_queries_and_keys():
    """ThetaRotary re-implements the built-in RoPE: with the same weights, the same logits; a
    different theta changes them (so the module is what attention used)."""
    torch.manual_seed(0)
    builtin = build_model(preset="tiny_llama_4m", rope_theta=500.0, **SIZE).eval()
    own = build_model(
        preset="tiny_llama_4m", rope_theta=500.0, positional_encoding=SLOTS.ThetaRotary, **SIZE
    ).eval()
    assert own.config.positional_encoding == "own_slots:ThetaRotary"
    assert type(own.model.rotary) is SLOTS.ThetaRotary and own.model.absolute_positions is None
    own.load_state_dict(builtin.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(own(IDS).logits, builtin(IDS).logits)
        own.model.rotary.theta = 10000.0
        assert not torch.allclose(own(IDS).logits, builtin(IDS).logits)


def test_an_absolute_position_module_of_your_own_is_added_to_the_embeddings_and_trains():
    model = build_model(
        preset="tiny_llama_4m", positional_encoding=SLOTS.GatedSinusoid, **SIZE
    ).train()
    assert model.model.rotary is None
    assert type(model.model.absolute_positions) is SLOTS.GatedSinusoid
    assert "model.absolute_positions.gain" in model.state_dict()
    model(input_ids=IDS, labels=IDS).loss.backward()
    assert model.model.absolute_positions.gain.grad.abs().sum() > 0


def test_an_input_encoder_of_your_own_replaces_the_embedding_and_can_be_tied():
    model = build_model(
        preset="tiny_llama_4m", input_encoder=SLOTS.ScaledEmbedding, tie_word_embeddings=True,
        **SIZE,
    )  # fmt: skip
    assert model.config.input_encoder == "own_slots:ScaledEmbedding"
    assert type(model.get_input_embeddings()) is SLOTS.ScaledEmbedding
    assert model.lm_head.weight is model.model.embed_tokens.weight
    hidden = model.model(IDS, use_cache=False).last_hidden_state
    assert hidden.shape == (*IDS.shape, SIZE["hidden_size"])
    untied = build_model(
        preset="tiny_llama_4m", input_encoder=SLOTS.FactorizedEmbedding,
        tie_word_embeddings=False, **SIZE,
    )  # fmt: skip
    model(input_ids=IDS, labels=IDS).loss.backward()
    untied(input_ids=IDS, labels=IDS).loss.backward()
    assert untied.model.embed_tokens.small.weight.grad is not None
    with pytest.raises(ValueError, match=r"input encoder 'own_slots:FactorizedEmbedding' needs a"):
        build_model(
            preset="tiny_llama_4m", input_encoder=SLOTS.FactorizedEmbedding,
            tie_word_embeddings=True, **SIZE,
        )  # fmt: skip


def test_an_init_function_of_your_own_initialises_every_module():
    model = build_model(
        preset="tiny_llama_4m", init_scheme=SLOTS.uniform_init, initializer_range=0.01, **SIZE
    )
    assert model.config.init_scheme == "own_slots:uniform_init"
    linear = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding))]
    assert all(w.abs().max() <= 0.01 for w in linear)
    # uniform, not normal: |w| spread evenly up to the bound (a normal(0.01) would pass 0.01 often)
    every = torch.cat([w.flatten() for w in linear])
    assert every.abs().max() > 0.0099 and abs(every.abs().mean().item() - 0.005) < 5e-4


def test_the_slots_save_and_load_in_a_fresh_process(tmp_path):
    torch.manual_seed(0)
    model = build_model(
        preset="tiny_llama_4m", positional_encoding=SLOTS.GatedSinusoid,
        input_encoder=SLOTS.ScaledEmbedding, init_scheme=SLOTS.uniform_init,
        tie_word_embeddings=True, **SIZE,
    ).eval()  # fmt: skip
    with torch.no_grad():
        model.model.absolute_positions.gain.mul_(3.0)  # a trained value, not the init's
        expected = model(IDS).logits
    out = save_model_dir(model, tmp_path / "saved")
    registry = (out / "custom_components.py").read_text()
    assert "from .own_slots import uniform_init" in registry
    assert (out / "own_slots.py").read_text() == Path(SLOTS.__file__).read_text()
    torch.save(expected, tmp_path / "expected.pt")
    child = textwrap.dedent(
        f"""
        import torch
        from forgather.ml.models.loading import load_causal_lm
        model, _, _ = load_causal_lm({str(out)!r}, require_tokenizer=False)
        assert type(model.model.absolute_positions).__name__ == "GatedSinusoid"
        with torch.no_grad():
            logits = model(torch.tensor({IDS.tolist()!r})).logits
        torch.testing.assert_close(logits, torch.load({str(tmp_path / "expected.pt")!r}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", child], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_slot_components_that_cannot_work_are_refused_by_field():
    with pytest.raises(ValueError, match=r"positional_encoding='own_slots:Unlabelled'.*`kind`"):
        build_model(preset="tiny_llama_4m", positional_encoding=SLOTS.Unlabelled, **SIZE)
    with pytest.raises(ValueError, match="init_scheme must be a built-in name or a function"):
        ForgatherConfig(init_scheme=SLOTS.ScaledEmbedding, **SIZE)
    with pytest.raises(ValueError, match="input_encoder must be a built-in name or a class"):
        ForgatherConfig(input_encoder=SLOTS.uniform_init, **SIZE)
    with pytest.raises(ValueError, match="positional_encoding must be one of rope, alibi"):
        ForgatherConfig(positional_encoding="xpos", **SIZE)
