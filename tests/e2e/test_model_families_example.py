"""`examples/tiny_experiments/model_families`: every family's config builds the model it names and
trains; the fine-tune config continues a trained model with its own tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from forgather.project import Project

from .conftest import read_logs, run_dirs

PROJECT = Path(__file__).resolve().parents[2] / "examples" / "tiny_experiments" / "model_families"

FAMILIES = {
    "llama.yaml": {"norm": "rmsnorm", "feedforward": "swiglu", "tie_word_embeddings": True},
    "mistral.yaml": {"num_key_value_heads": 2, "sliding_window": 128},
    "qwen3.yaml": {"qk_norm": True},
    "gpt2.yaml": {"positional_encoding": "learned", "norm": "layernorm", "attention_bias": True},
    "deepnet.yaml": {"layer_type": "deepnet", "init_scheme": "deepnet"},
    "hf_llama.yaml": {"model_type": "llama"},
}


def test_the_project_lists_every_family():
    from forgather.project import MetaConfig

    assert MetaConfig.load(PROJECT).config_names() == sorted([*FAMILIES, "finetune.yaml"])


@pytest.mark.unit
@pytest.mark.parametrize("config", sorted(FAMILIES))
def test_each_family_config_builds_its_model_and_it_learns(config):
    project = Project(config, PROJECT)
    model = project("model")()
    for field, value in FAMILIES[config].items():
        assert getattr(model.config, field) == value, field
    assert model.config.vocab_size == 4096 and model.config.max_position_embeddings == 256
    torch.manual_seed(0)
    ids = torch.randint(0, 4096, (2, 32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):  # the same batch three times: the loss must fall
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


@pytest.mark.slow
def test_finetune_continues_a_trained_model_with_its_own_tokenizer(forgather, trained, tmp_path):
    source, _ = trained
    out = tmp_path / "tuned"
    run = forgather(
        "-p", PROJECT, "-t", "finetune.yaml", "train", "--model-path", source,
        "--max-steps", "4", "--output-dir", out, "trainer_args.eval_steps=4",
        "trainer_args.save_steps=4", "trainer_args.logging_steps=2",
    )  # fmt: skip
    assert run.returncode == 0, run.describe()

    def losses(output_dir: Path) -> list[float]:
        return [r["loss"] for r in read_logs(run_dirs(output_dir)[-1]) if "loss" in r]

    # it starts where the trained model ended, well below where that one started (~ln 4096)
    assert abs(losses(out)[0] - losses(source)[-1]) < 0.5, (losses(out), losses(source))
    assert losses(out)[0] < losses(source)[0] - 0.5
    assert (
        json.loads((out / "config.json").read_text())["hidden_size"]
        == json.loads((source / "config.json").read_text())["hidden_size"]
    )
    assert (out / "tokenizer.json").read_text() == (source / "tokenizer.json").read_text()
    bad = forgather(
        "-p", PROJECT, "-t", "finetune.yaml", "train", "--model-path", tmp_path / "nowhere",
        "--max-steps", "1", "--output-dir", tmp_path / "never",
    )  # fmt: skip
    assert bad.returncode != 0 and "nowhere does not exist" in bad.stderr + bad.stdout
    assert not (tmp_path / "never").exists()
