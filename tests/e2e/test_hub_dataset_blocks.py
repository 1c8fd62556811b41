"""The library's hub dataset blocks (datasets/tinystories.yaml, wikitext.yaml, fineweb_edu.yaml,
smollm.yaml) train offline from local copies laid out like the hub repositories, through the CLI;
the model family blocks (models/*.yaml) build the family they name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.fixtures.hub_layouts import WRITERS

from .conftest import REPO, SMALL_MODEL, read_logs, run_dirs

META = """\
-- extends "meta_defaults.yaml"
-- block configs
name: Hub blocks
description: The library's hub dataset and model blocks
config_prefix: configs
default_config: tinystories.yaml
-- endblock configs
"""

# A config as a user writes one: the block, and ns.hub_dataset_path pointing at the local copy.
# Tiny copies: a few held-out documents, a small shuffle buffer (the defaults suit real corpora);
# one tokenizer for all, trained in a moment on the TinyStories copy's few stories.
CONFIG = """\
-- extends "training_script/causal_lm.yaml"
-- block config_metadata
    == super()
    -- set ns.model_name = "{name}"
    -- set ns.hub_dataset_path = {path!r}
    -- set ns.dataset_path = {tokenizer_data!r}
    -- set ns.eval_docs = 4
    -- set ns.shuffle_buffer = 8
    -- set ns.packing_buffer = 16
-- endblock config_metadata
-- block datasets
-- include "datasets/{name}.yaml"
-- endblock datasets
-- block trainer_callbacks
-- include "callbacks/minimal.yaml"
-- endblock trainer_callbacks
"""


@pytest.fixture(scope="module")
def hub_project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hub_blocks")
    (root / "templates" / "configs").mkdir(parents=True)
    (root / "meta.yaml").write_text(META)
    tokenizer_data = str(root / "copies" / "tinystories" / "data")
    for name, write in WRITERS.items():
        copy = write(root / "copies" / name)
        config = CONFIG.format(name=name, path=str(copy), tokenizer_data=tokenizer_data)
        (root / "templates" / "configs" / f"{name}.yaml").write_text(config)
    return root


@pytest.mark.slow
def test_each_hub_block_trains_two_steps_offline_from_a_local_copy(hub_project, e2e_env, tmp_path):
    # (the template-library walk renders and validates each block; here they train) the four runs
    # at once: each is mostly start-up
    env = {**e2e_env, "OMP_NUM_THREADS": "1"}  # four processes share the cores
    runs = {}
    for name in WRITERS:
        command = [
            sys.executable, "-m", "forgather.cli.main", "-p", str(hub_project), "-t",
            f"{name}.yaml", "train", "--output-dir", str(tmp_path / name), "--max-steps", "2",
            "trainer_args.logging_steps=1", "trainer_args.save_strategy=no",
            "trainer_args.per_device_train_batch_size=2", "trainer_args.per_device_eval_batch_size=4",
            "main.sample_prompts=[]", "+main.do_eval=false", *SMALL_MODEL,
        ]  # fmt: skip
        runs[name] = subprocess.Popen(
            command, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    for name, process in runs.items():
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, (name, output[-4000:])
        records = [r for d in run_dirs(tmp_path / name) for r in read_logs(d)]
        assert [r["global_step"] for r in records if "loss" in r] == [1, 2], name


@pytest.mark.unit
@pytest.mark.parametrize("name", ["tinystories", "wikitext", "fineweb_edu"])
def test_each_hub_block_builds_train_and_validation_rows_from_the_local_copy(hub_project, name):
    """(smollm's interleaved streams train in the test above; `datasets` pauses 5 s whenever an
    interleaved parquet stream is closed, so it is not read again here.)"""
    from forgather.project import Project

    project = Project(f"{name}.yaml", hub_project)
    for target in ("train_dataset", "eval_dataset"):
        dataset = project(target)
        row = next(iter(dataset))
        assert 0 < len(row["input_ids"]) <= 256 and row["document_starts"][0] == 0, target


FAMILIES = {
    "llama": {"norm": "rmsnorm", "feedforward": "swiglu", "tie_word_embeddings": True},
    "mistral": {"num_key_value_heads": 2, "sliding_window": 64, "tie_word_embeddings": False},
    "qwen3": {"qk_norm": True},
    "gpt2": {"positional_encoding": "learned", "num_key_value_heads": 8, "attention_bias": True},
}
MODEL_CONFIG = """\
-- extends "training_script/causal_lm.yaml"
-- block config_metadata
    == super()
    -- set ns.num_hidden_layers = 2
    -- set ns.num_attention_heads = 8
    -- set ns.sliding_window = 64
-- endblock config_metadata
-- block model
-- include "models/{name}.yaml"
-- endblock model
"""


@pytest.mark.unit
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_model_block_builds_its_family_with_the_size_variables(tmp_path, family):
    from forgather.project import Project

    (tmp_path / "templates" / "configs").mkdir(parents=True)
    (tmp_path / "meta.yaml").write_text(META.replace("tinystories.yaml", "m.yaml"))
    (tmp_path / "templates" / "configs" / "m.yaml").write_text(MODEL_CONFIG.format(name=family))
    model = Project("m.yaml", tmp_path)("model")()
    assert model.config.num_hidden_layers == 2 and model.config.num_attention_heads == 8
    assert model.config.max_position_embeddings == 256
    for field, value in FAMILIES[family].items():
        assert getattr(model.config, field) == value, field
    ids = torch.randint(0, model.config.vocab_size, (1, 16))
    assert model(input_ids=ids, labels=ids).loss.isfinite()
