"""save_model_dir round trips, the self-contained package, factories, presets, HF-native models."""

from __future__ import annotations

import ast
import json
import sys

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from forgather.ml.models.factory import (
    build_model,
    count_parameters,
    hf_model_from_config,
    model_config,
    register_auto_classes,
)
from forgather.ml.models.presets import PRESETS, preset
from forgather.ml.models.save import PACKAGE_DIR, package_source_files, save_model_dir
from forgather.ml.models.transformer import ForgatherConfig, ForgatherForCausalLM

from .conftest import VOCAB, tiny_model

pytestmark = pytest.mark.unit

PACKAGE_FILES = {
    "__init__.py",
    "artefact.py",
    "attention.py",
    "configuration_forgather.py",
    "custom_components.py",
    "feedforward.py",
    "layers.py",
    "loss.py",
    "modeling_forgather.py",
    "norms.py",
    "positional.py",
}


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran"]
    vocab = {"[PAD]": 0, "[BOS]": 1, "[EOS]": 2, "[UNK]": 3}
    vocab.update({w: i + 4 for i, w in enumerate(words)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        unk_token="[UNK]",
    )


# ---------------------------------------------------------------- the self-contained package


def test_package_imports_only_torch_transformers_stdlib_and_siblings():
    siblings = {p.stem for p in package_source_files()}
    assert {p.name for p in package_source_files()} == PACKAGE_FILES
    allowed = {"torch", "transformers"} | set(sys.stdlib_module_names)
    for source in package_source_files():
        tree = ast.parse(source.read_text(), filename=str(source))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
                assert roots <= allowed, f"{source.name}:{node.lineno} imports {roots}"
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    # HF copies `from .x import y` siblings only: one dot, a module name
                    assert node.level == 1 and node.module in siblings, (
                        f"{source.name}:{node.lineno}: relative import must be 'from .<sibling> import'"
                    )
                else:
                    root = node.module.split(".")[0]
                    assert root in allowed, f"{source.name}:{node.lineno} imports {root}"
        assert "forgather." not in "".join(
            line for line in source.read_text().splitlines() if "import" in line
        )


# ---------------------------------------------------------------- save_model_dir


@pytest.mark.parametrize("tied", [True, False])
def test_save_model_dir_round_trip_with_remote_code(tmp_path, tied):
    model = tiny_model(
        tie_word_embeddings=tied,
        rope_scaling={"type": "llama3", "factor": 4.0},
        qk_norm=True,
        num_hidden_layers=3,
    )
    tokenizer = make_tokenizer()
    out = save_model_dir(model, tmp_path / "model", tokenizer=tokenizer)
    names = {p.name for p in out.iterdir()}
    assert names >= PACKAGE_FILES
    assert {"config.json", "model.safetensors", "generation_config.json"} <= names
    assert {"tokenizer.json", "tokenizer_config.json"} <= names
    for source in package_source_files():
        assert (out / source.name).read_bytes() == source.read_bytes()
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_forgather.ForgatherConfig",
        "AutoModel": "modeling_forgather.ForgatherModel",
        "AutoModelForCausalLM": "modeling_forgather.ForgatherForCausalLM",
    }
    assert config["model_type"] == "forgather-causal-lm"
    assert config["architectures"] == ["ForgatherForCausalLM"]
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2 and generation["bos_token_id"] == 1

    loaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    # the copied source ran, not forgather's own module
    assert type(loaded).__module__.startswith("transformers_modules")
    assert type(loaded).__module__.endswith("modeling_forgather")
    ids = torch.randint(3, VOCAB, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tied
    assert loaded.config.rope_scaling == model.config.rope_scaling


def test_round_trip_generate_and_reload_with_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    model = tiny_model(tie_word_embeddings=True)
    out = save_model_dir(model, tmp_path / "m", tokenizer=make_tokenizer())
    loaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    ids = tok("the cat sat on", return_tensors="pt")["input_ids"]
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(loaded.generate(ids, **kwargs), model.generate(ids, **kwargs))
    # a reloaded model saves again (its class is the dynamic one) and still loads
    again = save_model_dir(loaded, tmp_path / "again")
    reloaded = AutoModelForCausalLM.from_pretrained(again, trust_remote_code=True).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)


def test_registered_auto_classes_load_without_remote_code(tmp_path):
    register_auto_classes()
    model = tiny_model()
    out = save_model_dir(model, tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(loaded) is ForgatherForCausalLM
    assert isinstance(AutoConfig.from_pretrained(out), ForgatherConfig)
    ids = torch.randint(3, VOCAB, (1, 5))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    from_config = AutoModelForCausalLM.from_config(model.config)
    assert type(from_config) is ForgatherForCausalLM


def test_save_unwraps_wrappers_and_torch_bin(tmp_path):
    class Wrapper(nn.Module):  # DDP-like: the model lives in .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    model = tiny_model(tie_word_embeddings=True)
    out = save_model_dir(Wrapper(model), tmp_path / "bin", safe_serialization=False)
    names = {p.name for p in out.iterdir()}
    assert "pytorch_model.bin" in names and "model.safetensors" not in names
    loaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    ids = torch.randint(3, VOCAB, (1, 7))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_save_hf_native_model_has_no_forgather_source(tmp_path):
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
        )
    )
    out = save_model_dir(llama, tmp_path / "llama")
    names = {p.name for p in out.iterdir()}
    assert "modeling_forgather.py" not in names and "model.safetensors" in names
    assert "auto_map" not in json.loads((out / "config.json").read_text())
    assert isinstance(AutoModelForCausalLM.from_pretrained(out), LlamaForCausalLM)


# ---------------------------------------------------------------- factories and presets


def test_tiny_llama_preset():
    assert PRESETS["tiny_llama_4m"]["hidden_size"] == 256
    model = build_model(preset="tiny_llama_4m")
    cfg = model.config
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads) == (256, 768, 4)
    assert (cfg.num_hidden_layers, cfg.vocab_size) == (4, 4096)
    assert (cfg.norm, cfg.positional_encoding, cfg.feedforward) == ("rmsnorm", "rope", "swiglu")
    # 4096*256 embeddings (tied head) + 4 * (4*256^2 attention + 3*256*768 SwiGLU + 2*256 norms) + 256
    expected = 4096 * 256 + 4 * (4 * 256 * 256 + 3 * 256 * 768 + 2 * 256) + 256
    assert count_parameters(model) == expected == 4_458_752
    untied = build_model(preset="tiny_llama_4m", tie_word_embeddings=False)
    assert count_parameters(untied) == expected + 4096 * 256
    model.model.embed_tokens.weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == expected - 4096 * 256
    with pytest.raises(KeyError, match="unknown model preset"):
        preset("nope")


def test_build_model_and_model_config():
    cfg = model_config(preset="tiny_llama_4m", num_hidden_layers=2)
    assert isinstance(cfg, ForgatherConfig) and cfg.num_hidden_layers == 2
    model = build_model(config=cfg, dtype="bfloat16")
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    small = build_model(vocab_size=50, hidden_size=16, num_attention_heads=2, num_hidden_layers=1)
    assert isinstance(small, ForgatherForCausalLM) and small.config.vocab_size == 50
    with pytest.raises(ValueError, match="not both"):
        build_model(config=cfg, hidden_size=8)


def _train_steps(model, steps=5):
    torch.manual_seed(0)
    ids = torch.randint(0, 64, (4, 16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_hf_llama_from_config_trains():
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = hf_model_from_config(config)
    assert isinstance(model, LlamaForCausalLM)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = _train_steps(model)
    assert losses[-1] < losses[0]
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())
    from_dict = hf_model_from_config(
        {
            "model_type": "llama",
            "vocab_size": 64,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
        }
    )
    assert isinstance(from_dict, LlamaForCausalLM) and from_dict.config.num_hidden_layers == 1


def test_forgather_model_trains():
    model = build_model(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    losses = _train_steps(model)
    assert losses[-1] < losses[0]


def test_package_dir_is_the_transformer_package():
    assert PACKAGE_DIR.name == "transformer" and (PACKAGE_DIR / "modeling_forgather.py").exists()


def test_pretrained_model_loads_a_trained_model_to_fine_tune(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from forgather.ml.models.factory import pretrained_model
    from forgather.ml.train.args import TrainingArguments
    from forgather.ml.train.trainer import Trainer

    torch.manual_seed(0)
    source = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        )
    )  # fmt: skip
    source.save_pretrained(tmp_path / "llama")
    model = pretrained_model(str(tmp_path / "llama"), dtype="bfloat16")
    assert type(model) is LlamaForCausalLM and model.training
    assert next(model.parameters()).dtype == torch.bfloat16
    for name, tensor in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor.to(torch.bfloat16), msg=name)

    ids = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(1))
    data = [{"input_ids": row} for row in ids]
    args = TrainingArguments(output_dir=str(tmp_path / "tuned"), max_steps=2, save_strategy="no")
    trainer = Trainer(
        args=args,
        model_init=lambda: pretrained_model(str(tmp_path / "llama"), dtype="float32"),
        train_dataset=data,
    )
    state = trainer.train()
    assert state.global_step == 2
    with pytest.raises(Exception, match="nowhere"):
        pretrained_model(str(tmp_path / "nowhere"))
