"""`forgather finalize`: a run's chosen checkpoint becomes a clean directory (weights cast, tokenizer
with a checked chat template, no training state) that plain transformers loads with the same logits."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from forgather.cli.main import app
from forgather.ml.models.finalize import FinalizeError, finalize

pytestmark = pytest.mark.unit

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A two-checkpoint training run of a small forgather model with a real tokenizer."""
    from forgather.ml.data.corpus import embedded_texts
    from forgather.ml.data.tokenizer import train_tokenizer
    from forgather.ml.models.factory import build_model
    from forgather.ml.train.args import TrainingArguments
    from forgather.ml.train.trainer import Trainer
    from tests.unit.train._tiny import ProgressionDataset

    tokenizer = train_tokenizer(embedded_texts("validation")[:4], vocab_size=400)
    out = tmp_path_factory.mktemp("finalize") / "run"
    args = TrainingArguments(
        output_dir=str(out), max_steps=4, save_steps=2, logging_steps=1,
        per_device_train_batch_size=4, device="cpu",
    )  # fmt: skip
    Trainer(
        args=args,
        model_init=lambda: build_model(
            preset="tiny_llama_4m",
            vocab_size=400,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        ),  # fmt: skip
        train_dataset=ProgressionDataset(16),
        processing_class=tokenizer,
    ).train()
    return out


def test_finalize_writes_a_clean_directory_that_transformers_loads(run_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from forgather.ml.models.loading import load_causal_lm

    template = tmp_path / "chatml.jinja"
    template.write_text(CHATML)
    done = finalize(
        run_dir, tmp_path / "out", checkpoint="checkpoint-2", dtype="bfloat16",
        chat_template=template,
    )  # fmt: skip
    assert done.source.name == "checkpoint-2" and done.chat_template and done.max_abs_diff == 0
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json"} <= names
    assert "tokenizer.json" in names and "modeling_forgather.py" in names
    assert not names & {"optimizer", "model", "manifest.json", "trainer_state.json", "scheduler.pt"}
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    chat = [{"role": "user", "content": "Hi"}]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True)
    assert next(loaded.parameters()).dtype == torch.bfloat16
    reference, _, _ = load_causal_lm(run_dir / "checkpoints" / "checkpoint-2", dtype="bfloat16")
    ids = torch.tensor([[1, 2, 3, 50, 60, 70]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, reference(input_ids=ids).logits)


def test_bad_input_is_one_line_and_writes_nothing(run_dir, tmp_path):
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}{{ m['content'] }")
    with pytest.raises(FinalizeError, match=r"--chat-template .*broken\.jinja"):
        finalize(run_dir, tmp_path / "a", checkpoint="latest", chat_template=broken)
    assert not (tmp_path / "a").exists()
    runner = CliRunner()
    best = runner.invoke(
        app, ["finalize", str(run_dir), str(tmp_path / "b"), "--checkpoint", "best"]
    )
    assert best.exit_code == 1 and "records an eval_loss" in best.output  # never evaluated
    done = runner.invoke(
        app, ["finalize", str(run_dir), str(tmp_path / "b"), "--checkpoint", "latest"]
    )
    assert done.exit_code == 0, done.output
    assert done.output.strip().endswith(str(tmp_path / "b"))
    again = runner.invoke(
        app, ["finalize", str(run_dir), str(tmp_path / "b"), "--checkpoint", "latest"]
    )
    assert again.exit_code == 1 and "already exists; give a new directory" in again.output
    missing = runner.invoke(
        app, ["finalize", str(run_dir), str(tmp_path / "c"), "--checkpoint", "checkpoint-9"]
    )
    assert (
        missing.exit_code == 1 and "--checkpoint checkpoint-9: no such checkpoint" in missing.output
    )
    assert not (tmp_path / "c").exists()
