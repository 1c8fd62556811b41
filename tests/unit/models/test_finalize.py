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


QUANTISED_CHILD = """
import importlib.util, json, sys
assert importlib.util.find_spec("forgather") is None, "forgather is importable"
import torch
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
ids = torch.tensor([json.loads(sys.argv[2])])
with torch.no_grad():
    logits = model(ids).logits
    out = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
weight = model.model.layers[0].mlp.up_proj.weight
assert not any(m.startswith("forgather") for m in sys.modules)
print(json.dumps({"logits": logits[0, -1].tolist(), "new": out[0, ids.shape[1]:].tolist(),
                  "weight": type(weight).__name__}))
"""


@pytest.mark.slow
def test_quantize_int8_writes_a_directory_plain_transformers_loads_with_torchao(
    run_dir, tmp_path, torchao_python, remote_torchao_venv
):
    """`--quantize int8` (run where torchao is installed): the linear layers' weights are stored
    as int8 with scales, config.json says how, and a venv without forgather (torch, transformers,
    torchao) loads and generates with it, close to the float model."""
    import subprocess
    from pathlib import Path

    from safetensors import safe_open

    from forgather.ml.models.loading import load_causal_lm
    from tests.remote_venv import clean_env

    repo = Path(__file__).resolve().parents[3]
    out = tmp_path / "int8"
    done = subprocess.run(
        [str(torchao_python), "-m", "forgather.cli.main", "finalize", str(run_dir), str(out),
         "--checkpoint", "latest", "--quantize", "int8"],
        cwd=tmp_path, env=clean_env(PYTHONPATH=str(repo)), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "(int8 weights, float32 compute); reloaded with transformers" in done.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "torchao"
    with safe_open(out / "model.safetensors", "pt") as weights:
        dtypes = {name: weights.get_slice(name).get_dtype() for name in weights.keys()}  # noqa: SIM118
    assert dtypes["model.layers.0.mlp.up_proj._weight_qdata"] == "I8"
    assert dtypes["model.embed_tokens.weight"] == "F32"  # embeddings and head stay as they were

    ids = [1, 2, 3, 50, 60, 70, 80]
    loaded = subprocess.run(
        [str(remote_torchao_venv), "-c", QUANTISED_CHILD, str(out), json.dumps(ids)],
        cwd=tmp_path, env=clean_env(HF_MODULES_CACHE=str(tmp_path / "hf_modules")),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    result = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert result["weight"] == "Int8Tensor" and len(result["new"]) == 6
    reference, _, _ = load_causal_lm(run_dir / "checkpoints" / "checkpoint-4")
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0, -1]
    difference = (torch.tensor(result["logits"]) - expected).abs().max().item()
    assert 0 < difference < 0.05 * expected.abs().max().item()  # quantised, and close

    cuda_only = subprocess.run(
        [str(torchao_python), "-m", "forgather.cli.main", "finalize", str(run_dir),
         str(tmp_path / "int4"), "--checkpoint", "latest", "--quantize", "int4"],
        cwd=tmp_path, env=clean_env(PYTHONPATH=str(repo)), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert cuda_only.returncode == 1
    assert "error: --quantize int4: torchao's int4 weight-only layout" in cuda_only.stderr
    assert not (tmp_path / "int4").exists()


def test_quantize_without_torchao_says_what_to_install(run_dir, tmp_path):
    import importlib.util

    if importlib.util.find_spec("torchao") is not None:
        pytest.skip("torchao is installed here")
    done = CliRunner().invoke(
        app, ["finalize", str(run_dir), str(tmp_path / "q"), "--quantize", "int8"]
    )
    assert done.exit_code == 1
    assert "--quantize needs torchao (pip install 'forgather[quantize]')" in done.output
    assert not (tmp_path / "q").exists()
    bad = CliRunner().invoke(
        app, ["finalize", str(run_dir), str(tmp_path / "q"), "--quantize", "int3"]
    )
    assert bad.exit_code == 1 and "--quantize must be one of int8, int4; got 'int3'" in bad.output
