"""`forgather update-model`: a directory saved by an older forgather (the format-0 fixture, written
by the model code of commit 2e4b277) comes out in the current format with the current code and
equal logits; what cannot be updated says why and writes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from forgather.cli.main import app
from forgather.ml.models import update
from forgather.ml.models.loading import load_causal_lm
from forgather.ml.models.save import ModelDirExists
from forgather.ml.models.transformer.artefact import FORMAT

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "models" / "format0_tiny"
IDS = torch.tensor([[1, 5, 9, 33, 2, 60, 17, 4]])


@pytest.fixture
def old_dir(tmp_path) -> Path:
    # a copy per test: transformers caches a directory's code by its name
    target = tmp_path / f"old_{tmp_path.name}"
    shutil.copytree(FIXTURE, target)
    return target


def old_code_logits(directory: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True).eval()
    assert "artefact" not in {p.stem for p in directory.glob("*.py")}  # really the old code
    with torch.no_grad():
        return model(IDS).logits


def test_an_old_directory_gets_the_current_format_and_code_with_equal_logits(old_dir, tmp_path):
    expected = old_code_logits(old_dir)
    lines: list[str] = []
    done = update.update_model(old_dir, tmp_path / "new", say=lines.append)
    assert (done.from_format, done.to_format) == (0, FORMAT)
    assert done.max_abs_diff <= 1e-5 and len(done.migrations) == FORMAT
    fields = json.loads((tmp_path / "new" / "config.json").read_text())
    assert fields["forgather_format"] == FORMAT and fields["attention"] == "causal"
    assert (tmp_path / "new" / "artefact.py").is_file()
    assert any(line.startswith("migration: format 1") for line in lines)
    model, _, _ = load_causal_lm(tmp_path / "new", require_tokenizer=False)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, expected, atol=1e-5, rtol=1e-5)
    again = update.update_model(tmp_path / "new", tmp_path / "again")  # current: nothing to migrate
    assert again.migrations == [] and again.from_format == FORMAT


def test_the_command_line_writes_the_directory_and_prints_it(old_dir, tmp_path):
    result = CliRunner().invoke(app, ["update-model", str(old_dir), str(tmp_path / "new")])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith(str(tmp_path / "new"))
    assert "format 0 -> 1" in result.output


def test_code_that_computes_differently_writes_nothing(old_dir, tmp_path, monkeypatch):
    def perturb(state):
        return {k: v + 0.01 if k.endswith("q_proj.weight") else v for k, v in state.items()}

    broken = update.Migration(0, "a migration that changes the function", lambda f: f, perturb)
    monkeypatch.setattr(update, "MIGRATIONS", (broken,))
    with pytest.raises(update.UpdateError, match="computes different logits.*nothing written"):
        update.update_model(old_dir, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_what_cannot_be_updated_says_why(old_dir, tmp_path):
    newer = tmp_path / "newer"
    shutil.copytree(old_dir, newer)
    fields = json.loads((newer / "config.json").read_text())
    (newer / "config.json").write_text(json.dumps({**fields, "forgather_format": FORMAT + 1}))
    with pytest.raises(update.UpdateError, match=f"newer forgather \\(format {FORMAT + 1}\\)"):
        update.update_model(newer, tmp_path / "a")
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(update.UpdateError, match="'llama' is not a forgather model"):
        update.update_model(llama, tmp_path / "b")
    with pytest.raises(update.UpdateError, match="not a model directory"):
        update.update_model(tmp_path / "nowhere", tmp_path / "c")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(ModelDirExists):
        update.update_model(old_dir, tmp_path / "taken")
