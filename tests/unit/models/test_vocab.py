"""`forgather update-vocab --add-tokens FILE.yaml`: new special and ordinary tokens get the next ids,
single tokens in the tokenizer, embedding and head rows initialised by the rule (old rows untouched),
and the generation config stops at the named tokens; a bad file is one line naming file:line and key."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from forgather.cli.main import app
from forgather.ml.models.vocab import VocabError, read_spec, update_vocab

pytestmark = pytest.mark.unit

CHATML = """\
special_tokens: ["<|im_start|>", "<|im_end|>"]
tokens: ["Knightley"]
pad_token: "<|pad|>"
generation_eos: ["<|im_end|>"]
"""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small forgather model (untied head) with a real byte-level BPE tokenizer of 400 ids."""
    from forgather.ml.data.corpus import embedded_texts
    from forgather.ml.data.tokenizer import train_tokenizer
    from forgather.ml.models.factory import build_model
    from forgather.ml.models.save import save_model_dir

    tokenizer = train_tokenizer(embedded_texts("validation")[:4], vocab_size=400)
    torch.manual_seed(0)
    model = build_model(
        preset="tiny_llama_4m", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        tie_word_embeddings=False,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("vocab") / "model"
    save_model_dir(model, path, tokenizer=tokenizer)
    return path


@pytest.mark.parametrize("init", ["mean", "zero"])
def test_tokens_are_added_and_rows_initialised(model_dir, tmp_path, init):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = tmp_path / "chatml.yaml"
    spec.write_text(CHATML)
    before = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True)
    done = update_vocab(model_dir, tmp_path / "out", spec, init=init)
    assert list(done.added) == ["<|im_start|>", "<|im_end|>", "Knightley", "<|pad|>"]
    assert sorted(done.added.values()) == [400, 401, 402, 403] and done.vocab_size == 404

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    ids = tokenizer("<|im_start|>user Knightley<|im_end|>")["input_ids"]
    assert ids[0] == done.added["<|im_start|>"] and ids[-1] == done.added["<|im_end|>"]
    assert done.added["Knightley"] in ids and tokenizer.pad_token_id == 403
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True)
    assert model.config.vocab_size == 404 and model.config.pad_token_id == 403
    generation = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == done.added["<|im_end|>"]
    for table, old in (
        (model.get_input_embeddings().weight, before.get_input_embeddings().weight),
        (model.get_output_embeddings().weight, before.get_output_embeddings().weight),
    ):
        assert torch.equal(table[:400], old)  # the trained rows are untouched
        expected = old.mean(0) if init == "mean" else torch.zeros_like(old[0])
        for row in range(400, 404):
            torch.testing.assert_close(table[row], expected)
    with torch.no_grad():  # the new ids run through the model
        assert model(input_ids=torch.tensor([ids])).logits.shape[-1] == 404


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('special_tokens: ["<a>"]\nspecial_token: ["<b>"]\n', ":2: special_token: unknown key"),
        ("tokens: [1, 2]\n", ":1: tokens: must be a list of non-empty strings"),
        ('special_tokens: ["<a>"]\ninit: random\n', ":2: init: must be one of mean, zero"),
        ("tokens: [a\n", ":2: not YAML"),
    ],
)
def test_a_bad_file_names_its_line_and_key(tmp_path, text, message):
    spec = tmp_path / "add.yaml"
    spec.write_text(text)
    with pytest.raises(
        VocabError, match=str(spec).replace(".", r"\.") + message.replace("[", r"\[")
    ):
        read_spec(spec)


def test_the_command_refuses_an_eos_outside_the_vocabulary_and_writes_nothing(model_dir, tmp_path):
    spec = tmp_path / "add.yaml"
    spec.write_text('generation_eos: ["<|never-added|>"]\n')
    runner = CliRunner()
    done = runner.invoke(
        app, ["update-vocab", str(model_dir), str(tmp_path / "out"), "--add-tokens", str(spec)]
    )
    assert done.exit_code == 1
    assert "generation_eos: <|never-added|> not in the vocabulary" in done.output
    assert not (tmp_path / "out").exists()
    spec.write_text(CHATML)
    done = runner.invoke(
        app, ["update-vocab", str(model_dir), str(tmp_path / "out"), "--add-tokens", str(spec)]
    )
    assert done.exit_code == 0, done.output
    assert (
        "added 4 token(s) (<|im_start|> 400, <|im_end|> 401, Knightley 402, <|pad|> 403)"
        in done.output
    )


def test_an_input_encoder_of_your_own_is_refused_by_name_and_nothing_written(tmp_path):
    from pathlib import Path

    from forgather.config.specs import load_file_module
    from forgather.ml.data.corpus import embedded_texts
    from forgather.ml.data.tokenizer import train_tokenizer
    from forgather.ml.models.factory import build_model
    from forgather.ml.models.save import save_model_dir

    slots = load_file_module(
        str(Path(__file__).resolve().parents[2] / "fixtures" / "components" / "own_slots.py")
    )
    tokenizer = train_tokenizer(embedded_texts("validation")[:2], vocab_size=300)
    model = build_model(
        preset="tiny_llama_4m", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        input_encoder=slots.FactorizedEmbedding,
        tie_word_embeddings=False,
    )  # fmt: skip
    source = save_model_dir(model, tmp_path / "model", tokenizer=tokenizer)
    spec = tmp_path / "chatml.yaml"
    spec.write_text(CHATML)
    with pytest.raises(VocabError, match="input encoder is a FactorizedEmbedding, not an nn.Emb"):
        update_vocab(source, tmp_path / "out", spec)
    assert not (tmp_path / "out").exists()
