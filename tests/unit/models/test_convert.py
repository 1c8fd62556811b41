"""`forgather convert`: Hugging Face Llama / Mistral / Qwen3 / GPT-2 directories to forgather and back, with
equal logits and greedy text; the features a family cannot carry named; nothing written on error."""

from __future__ import annotations

import json
import re

import pytest
import torch
from typer.testing import CliRunner

from forgather.cli.main import app
from forgather.ml.convert.convert import convert
from forgather.ml.convert.registry import UnsupportedFeature
from forgather.ml.models.loading import ModelNotFoundError

pytestmark = pytest.mark.unit

SHAPE = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


def hf_dir(tmp_path, family: str, **overrides):
    """A randomly initialised Hugging Face model of `family`, saved locally (no hub)."""
    import transformers

    if family == "gpt2":
        torch.manual_seed(0)
        config = transformers.GPT2Config(
            vocab_size=300, n_positions=64, n_embd=64, n_layer=2, n_head=4,
            bos_token_id=0, eos_token_id=0, **overrides,
        )  # fmt: skip
        path = tmp_path / family
        transformers.GPT2LMHeadModel(config).save_pretrained(path)
        return path
    config_class, model_class = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    }[family]
    torch.manual_seed(0)
    model = model_class(config_class(**{**SHAPE, **overrides}))
    path = tmp_path / family
    model.save_pretrained(path)
    return path


def logits(model_dir, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits, model


IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 1, 64, 128, 33, 21, 8, 2, 11, 19, 200, 41]])


@pytest.mark.parametrize(
    ("family", "overrides", "back_as"),
    [
        ("llama", {"tie_word_embeddings": False, "rope_scaling": LLAMA3_ROPE}, "llama"),
        ("llama", {"tie_word_embeddings": True}, "mistral"),
        ("qwen3", {"head_dim": 16, "tie_word_embeddings": True}, "qwen3"),
        ("mistral", {"sliding_window": None}, "mistral"),
        ("mistral", {"sliding_window": 8}, None),  # the window makes it Mistral on the way back
        (
            "qwen3",
            {
                "head_dim": 16,
                "use_sliding_window": True,
                "sliding_window": 8,
                "max_window_layers": 0,
            },
            "qwen3",
        ),  # fmt: skip
        ("gpt2", {}, "gpt2"),
    ],
)
def test_round_trip_keeps_the_logits_and_the_greedy_text(tmp_path, family, overrides, back_as):
    source = hf_dir(tmp_path, family, **overrides)
    ours = convert(source, tmp_path / "forgather")
    assert ours.direction == "hf -> forgather" and ours.max_abs_diff < 1e-5
    config = json.loads((tmp_path / "forgather" / "config.json").read_text())
    assert config["model_type"] == "forgather-causal-lm" and "auto_map" in config
    assert config["sliding_window"] == overrides.get("sliding_window")
    back = convert(tmp_path / "forgather", tmp_path / "back", model_type=back_as)
    assert back.direction == "forgather -> hf" and back.max_abs_diff < 1e-5
    written = json.loads((tmp_path / "back" / "config.json").read_text())
    assert written["model_type"] == (back_as or family)
    if overrides.get("sliding_window"):
        assert written["sliding_window"] == overrides["sliding_window"]
    if family == "mistral" and overrides["sliding_window"]:
        with pytest.raises(UnsupportedFeature, match="write it as mistral: --model-type mistral"):
            convert(tmp_path / "forgather", tmp_path / "as-llama", model_type="llama")

    original, hf_model = logits(source, IDS)
    converted, our_model = logits(tmp_path / "forgather", IDS)
    returned, _ = logits(tmp_path / "back", IDS)
    torch.testing.assert_close(converted, original, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(returned, original, rtol=1e-5, atol=1e-5)
    options = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(hf_model.generate(IDS, **options), our_model.generate(IDS, **options))


def test_dtype_and_checkpoint_choice(tmp_path):
    """--dtype casts the written weights; --checkpoint picks a checkpoint of a training run."""
    from forgather.ml.train.args import TrainingArguments
    from forgather.ml.train.trainer import Trainer
    from tests.unit.train._tiny import ProgressionDataset, tiny_forgather

    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=4, save_steps=2, logging_steps=1,
        per_device_train_batch_size=4, device="cpu",
    )  # fmt: skip
    Trainer(args=args, model_init=tiny_forgather, train_dataset=ProgressionDataset(16)).train()
    done = convert(tmp_path / "run", tmp_path / "hf", checkpoint="checkpoint-2", dtype="bfloat16")
    assert done.source.name == "checkpoint-2" and done.model_type == "llama"
    from safetensors import safe_open

    with safe_open(tmp_path / "hf" / "model.safetensors", "pt") as weights:
        dtypes = {weights.get_tensor(k).dtype for k in weights.keys()}  # noqa: SIM118
        assert dtypes == {torch.bfloat16}
    with pytest.raises(ModelNotFoundError, match="--checkpoint checkpoint-9: no such checkpoint"):
        convert(tmp_path / "run", tmp_path / "other", checkpoint="checkpoint-9")


@pytest.mark.parametrize(
    ("family", "overrides", "message"),
    [
        ("llama", {"hidden_act": "gelu"}, "hidden_act='gelu'"),
        (
            "qwen3",
            {
                "head_dim": 16,
                "use_sliding_window": True,
                "sliding_window": 8,
                "max_window_layers": 1,
            },
            "layer_types ['full_attention', 'sliding_attention'] (forgather gives every layer",
        ),  # fmt: skip
        (
            "llama",
            {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}},
            "rope scaling 'dynamic'",
        ),
        ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=true"),
    ],
)
def test_a_feature_the_target_lacks_is_named_and_nothing_is_written(
    tmp_path, family, overrides, message
):
    source = hf_dir(tmp_path, family, **overrides)
    with pytest.raises(UnsupportedFeature, match=re.escape(message)):
        convert(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_command_prints_the_difference_and_refuses_bad_input_in_one_line(tmp_path):
    source = hf_dir(tmp_path, "llama")
    runner = CliRunner()
    done = runner.invoke(app, ["convert", str(source), str(tmp_path / "fg")])
    assert done.exit_code == 0, done.output
    assert "hf -> forgather (llama): logits on the prompt differ by at most" in done.output
    assert done.output.strip().endswith(str(tmp_path / "fg"))
    again = runner.invoke(app, ["convert", str(source), str(tmp_path / "fg")])
    assert again.exit_code == 1
    assert "error: " in again.output and "already exists; give a new directory" in again.output
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    neox = tmp_path / "neox"
    GPTNeoXForCausalLM(
        GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64)
    ).save_pretrained(neox)  # fmt: skip
    unknown = runner.invoke(app, ["convert", str(neox), str(tmp_path / "x")])
    assert unknown.exit_code == 1
    assert "model_type 'gpt_neox' has no converter; known: gpt2, llama, mistral, qwen3" in (
        unknown.output
    )
    assert not (tmp_path / "x").exists()
