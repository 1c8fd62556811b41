"""The headline: a saved directory loads and generates in a venv without forgather (one with only
torch, transformers and safetensors: tests/remote_venv.py), components of the user's own included.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from forgather.config.specs import load_file_module
from forgather.ml.models.finalize import finalize
from forgather.ml.models.save import save_model_dir
from tests.remote_venv import TORCH_VERSION
from tests.remote_venv import clean_env as _clean_env

from .conftest import VOCAB, flex_skip_reason, tiny_model

pytestmark = [pytest.mark.unit, pytest.mark.slow]

EXAMPLE_COMPONENTS = load_file_module(
    str(
        Path(__file__).resolve().parents[3]
        / "examples"
        / "custom_attention"
        / "cosine_attention.py"
    )
)
OWN_SLOTS = load_file_module(
    str(Path(__file__).resolve().parents[2] / "fixtures" / "components" / "own_slots.py")
)
INPUT_IDS = [[5, 17, 33, 2, 9, 41, 60, 11], [7, 7, 81, 23, 50, 3, 19, 92]]

CONFIGS = {
    "llama_like": dict(
        attention_backend="sdpa",
        num_key_value_heads=2,
        qk_norm=True,
        tie_word_embeddings=True,
        rope_scaling={"type": "yarn", "factor": 2.0},
    ),
    "deepnet_alibi": dict(
        attention_backend="eager",
        layer_type="deepnet",
        norm="layernorm",
        feedforward="mlp",
        positional_encoding="alibi",
        attention_bias=True,
        mlp_bias=True,
    ),
    "own_attention_and_norm": dict(  # examples/custom_attention's components
        attention=EXAMPLE_COMPONENTS.CosineAttention,
        norm=EXAMPLE_COMPONENTS.ScaleNorm,
        num_key_value_heads=2,
    ),
    "gpt2_like": dict(  # the tiny_gpt2 preset's choices
        norm="layernorm",
        feedforward="mlp",
        hidden_act="gelu_new",
        positional_encoding="learned",
        attention_bias=True,
        mlp_bias=True,
        num_key_value_heads=4,
        tie_word_embeddings=True,
    ),
    "mistral_sliding_window": dict(  # generation crosses the 5-token window
        num_key_value_heads=2, sliding_window=5, tie_word_embeddings=False
    ),
    "own_positions_encoder_init": dict(  # tests/fixtures/components/own_slots.py
        positional_encoding=OWN_SLOTS.ThetaRotary,
        input_encoder=OWN_SLOTS.ScaledEmbedding,
        init_scheme=OWN_SLOTS.uniform_init,
        tie_word_embeddings=True,
    ),
    "post_ln_sinusoidal_flex": dict(
        attention_backend="flex" if flex_skip_reason() is None else "sdpa",
        layer_type="post_ln",
        positional_encoding="sinusoidal",
        embedding_scale=4.0,
    ),
}

# saved with a plain `model.save_pretrained(dir)`, not forgather's save_model_dir
PLAIN_SAVE = ("own_attention_and_norm",)
# saved, then handed over with `forgather finalize` (what is loaded is the finalized directory)
FINALIZED = ("gpt2_like",)

CHILD = textwrap.dedent(
    """
    import importlib.util, json, sys
    assert importlib.util.find_spec("forgather") is None, "forgather is importable"
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    jobs = json.loads(sys.argv[1])
    ids = torch.tensor(json.loads(sys.argv[2]))
    report = {}
    for name, (model_dir, out_path) in jobs.items():
        model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True).eval()
        with torch.no_grad():
            logits = model(ids).logits
            generated = model.generate(
                ids, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0
            )
        save_file({"logits": logits.contiguous(), "generated": generated.contiguous()}, out_path)
        report[name] = type(model).__module__
    leaked = sorted(m for m in sys.modules if m == "forgather" or m.startswith("forgather."))
    assert not leaked, leaked
    print(json.dumps({"modules": report, "torch": torch.__version__}))
    """
)


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory) -> dict[str, tuple[Path, object]]:
    root = tmp_path_factory.mktemp("saved-models")
    models = {}
    for i, (name, overrides) in enumerate(CONFIGS.items()):
        model = tiny_model(seed=i, num_hidden_layers=3, **overrides)
        if name in PLAIN_SAVE:  # the model's own save_pretrained writes a complete directory
            model.save_pretrained(root / name)
            models[name] = (root / name, model)
        elif name in FINALIZED:
            saved = save_model_dir(model, root / f"{name}-saved")
            models[name] = (finalize(saved, root / name).destination, model)
        else:
            models[name] = (save_model_dir(model, root / name), model)
    return models


@pytest.fixture(scope="module")
def remote_results(remote_venv, saved_models, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("remote-run")  # cwd without forgather on sys.path
    jobs = {
        name: [str(path), str(work / f"{name}.safetensors")]
        for name, (path, _) in saved_models.items()
    }
    result = subprocess.run(
        [str(remote_venv), "-c", CHILD, json.dumps(jobs), json.dumps(INPUT_IDS)],
        cwd=work,
        env=_clean_env(HF_MODULES_CACHE=str(work / "hf_modules")),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    tensors = {name: load_file(out) for name, (_, out) in jobs.items()}
    return {"report": report, "tensors": tensors}


def test_venv_has_no_forgather(remote_venv, tmp_path):
    probe = subprocess.run(
        [str(remote_venv), "-c", "import forgather"],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr
    versions = subprocess.run(
        [
            str(remote_venv),
            "-c",
            "import torch, transformers; print(torch.__version__, transformers.__version__)",
        ],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    torch_version, transformers_version = versions.stdout.split()
    assert torch_version.split("+")[0] == TORCH_VERSION
    assert transformers_version == transformers.__version__


@pytest.mark.parametrize("name", list(CONFIGS))
def test_remote_code_logits_and_generation_match(remote_results, saved_models, name):
    _, model = saved_models[name]
    module = remote_results["report"]["modules"][name]
    assert module.startswith("transformers_modules") and module.endswith("modeling_forgather")
    remote = remote_results["tensors"][name]
    ids = torch.tensor(INPUT_IDS)
    with torch.no_grad():
        logits = model(ids).logits
        generated = model.generate(
            ids, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0
        )
    assert remote["logits"].shape == (2, 8, VOCAB)
    torch.testing.assert_close(remote["logits"], logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(remote["generated"], generated)
