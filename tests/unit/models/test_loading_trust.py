"""Loading a model runs no code from its directory unless it must and may (issue: a planted
`auto_map` ran code): forgather models are built from forgather's own classes, and a directory
whose `auto_map` names its own code is refused when others could have written that code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from forgather.ml.models.loading import ModelNotFoundError, UntrustedCodeError, load_causal_lm
from forgather.ml.models.save import save_model_dir

from .conftest import tiny_model
from .test_save_and_factory import make_tokenizer

PLANTED = """
from pathlib import Path
Path({marker!r}).write_text("ran")
from transformers import LlamaConfig, LlamaForCausalLM


class PlantedConfig(LlamaConfig):
    model_type = "planted-llama"


class PlantedModel(LlamaForCausalLM):
    config_class = PlantedConfig
"""


def planted_dir(root: Path, marker: Path) -> Path:
    """A Llama directory whose config.json sends transformers to code in the directory."""
    directory = root / "planted"
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=13, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2,
        )
    )  # fmt: skip
    model.save_pretrained(directory)
    make_tokenizer().save_pretrained(directory)
    (directory / "planted.py").write_text(PLANTED.format(marker=str(marker)))
    config = json.loads((directory / "config.json").read_text())
    config["model_type"] = "planted-llama"
    config["auto_map"] = {
        "AutoConfig": "planted.PlantedConfig",
        "AutoModelForCausalLM": "planted.PlantedModel",
    }
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_a_forgather_model_loads_with_forgathers_classes_not_the_copied_source(
    tmp_path, monkeypatch
):
    asked: list[str] = []

    def no_prompt(question=""):  # transformers asks on stdin when it is not told
        asked.append(question)
        raise EOFError

    monkeypatch.setattr("builtins.input", no_prompt)
    marker = tmp_path / "ran"
    model = tiny_model()
    directory = tmp_path / "model"
    save_model_dir(model, directory, tokenizer=make_tokenizer())
    source = directory / "modeling_forgather.py"
    assert source.is_file()  # the copy for machines without forgather
    source.write_text(f"open({str(marker)!r}, 'w').write('ran')\n" + source.read_text())
    os.chmod(directory, 0o777)  # even writable by all: none of its code runs
    loaded, tokenizer, _ = load_causal_lm(directory)
    assert not marker.exists() and asked == []  # nothing ran, nobody was asked
    assert tokenizer("the cat")["input_ids"]
    assert type(loaded).__module__ == "forgather.ml.models.transformer.modeling_forgather"
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_remote_code_writable_by_others_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "ran"
    directory = planted_dir(tmp_path, marker)
    os.chmod(directory / "planted.py", 0o666)
    with pytest.raises(UntrustedCodeError, match=r"planted.py is writable by every user"):
        load_causal_lm(directory)
    assert not marker.exists()


@pytest.mark.skipif(os.getuid() != 0, reason="giving a file to another user needs root")
def test_remote_code_owned_by_another_user_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "ran"
    directory = planted_dir(tmp_path, marker)
    os.chown(directory, 65534, 65534)
    with pytest.raises(UntrustedCodeError, match=r"is owned by uid 65534, not by you"):
        load_causal_lm(directory)
    assert not marker.exists()


def test_remote_code_only_its_owner_can_write_runs_as_asked(tmp_path):
    marker = tmp_path / "ran"
    directory = planted_dir(tmp_path, marker)
    for path in [directory, *directory.iterdir()]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    model, _, _ = load_causal_lm(directory)
    assert marker.read_text() == "ran" and type(model).__name__ == "PlantedModel"
    marker.unlink()
    with pytest.raises(ModelNotFoundError, match="trust_remote_code"):  # not asked for
        load_causal_lm(directory, trust_remote_code=False)
    assert not marker.exists()
