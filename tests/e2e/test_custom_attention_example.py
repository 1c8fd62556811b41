"""`examples/custom_attention`: a project's own attention and norm, named by file and class in its
config, train through `forgather train`; the saved model directory and every checkpoint carry the
file, and the model loads in a venv without forgather with the logits forgather gives."""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest
import torch

from forgather.ml.models.loading import load_causal_lm
from tests.remote_venv import clean_env

from .conftest import REPO, SMALL_MODEL

pytestmark = pytest.mark.slow

PROJECT = REPO / "examples" / "custom_attention"
IDS = [[5, 17, 33, 2, 9, 41, 60, 11]]
CHILD = textwrap.dedent(
    """
    import importlib.util, json, sys
    assert importlib.util.find_spec("forgather") is None
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(torch.tensor(json.loads(sys.argv[2]))).logits
    print(json.dumps({"class": type(model.model.layers[0].self_attn).__name__,
                      "logits": logits[0, -1].tolist()}))
    """
)


def test_the_example_trains_saves_its_source_and_loads_without_forgather(
    forgather, remote_venv, tmp_path
):
    out = tmp_path / "out"
    run = forgather(
        "-p", PROJECT, "train", "--max-steps", "4", "--output-dir", out, *SMALL_MODEL,
        "trainer_args.eval_steps=4", "trainer_args.save_steps=4",
    )  # fmt: skip
    assert run.returncode == 0, run.describe()
    config = json.loads((out / "config.json").read_text())
    assert config["attention"] == "cosine_attention:CosineAttention"
    assert config["norm"] == "cosine_attention:ScaleNorm"
    for directory in (out, out / "checkpoints" / "checkpoint-4" / "hf"):
        assert (directory / "cosine_attention.py").read_bytes() == (
            PROJECT / "cosine_attention.py"
        ).read_bytes(), directory

    model, _, _ = load_causal_lm(out)
    with torch.no_grad():
        expected = model(torch.tensor(IDS)).logits[0, -1]
    work = tmp_path / "clean"
    work.mkdir()
    loaded = subprocess.run(
        [str(remote_venv), "-c", CHILD, str(out), json.dumps(IDS)],
        cwd=work,
        env=clean_env(HF_MODULES_CACHE=str(work / "hf_modules")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    report = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert report["class"] == "CosineAttention"
    torch.testing.assert_close(torch.tensor(report["logits"]), expected, atol=1e-5, rtol=1e-5)
