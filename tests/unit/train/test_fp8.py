"""`fp8` (torchao float8 training): the config key is checked, a run that cannot use it stops with
one clear error before anything is built, and the conversion swaps exactly the blocks' linear
layers (never the head). The float8 matmuls themselves run on the GPU: test_trainer_cuda.py.
The conversion tests need torchao (`pip install -e ".[fp8]"`; not in the dev extras)."""

from __future__ import annotations

import pytest
import torch

from forgather.ml.train import fp8
from forgather.ml.train.args import TrainingArguments
from forgather.ml.train.trainer import Trainer
from tests.unit.train._tiny import ProgressionDataset, tiny_forgather


def test_an_unknown_recipe_names_the_key_and_the_choices():
    with pytest.raises(ValueError, match=r"fp8 must be one of \('tensorwise', 'rowwise'"):
        TrainingArguments(output_dir="out", fp8="e4m3")


def test_on_a_cpu_the_run_stops_before_training_and_says_why(tmp_path):
    trainer = Trainer(
        args=TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=2, fp8="tensorwise"),
        model_init=tiny_forgather,
        train_dataset=ProgressionDataset(16),
    )
    with pytest.raises(
        ValueError, match="fp8=tensorwise needs an NVIDIA GPU with FP8 tensor cores"
    ):
        trainer.train()
    assert not (tmp_path / "out").exists()
    assert trainer.fp8_layers == []


def test_the_conversion_takes_every_projection_of_the_blocks_and_never_the_head():
    pytest.importorskip("torchao.float8")
    model = tiny_forgather(hidden_size=64, layers=2)
    names = fp8.convert(model, "rowwise")
    projections = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert sorted(names) == sorted(
        f"model.layers.{i}.{part}.{p}"
        for i in range(2)
        for part, p in [("self_attn", p) for p in projections[:4]]
        + [("mlp", p) for p in projections[4:]]
    )
    assert type(model.lm_head) is torch.nn.Linear
    assert fp8.convert(model, "rowwise") == names  # a second train() converts nothing twice


def test_a_layer_the_float8_kernels_cannot_take_stays_as_it_is():
    pytest.importorskip("torchao.float8")
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Linear(48, 40))
    assert fp8.convert(model, "tensorwise") == ["0"]  # 40 is not a multiple of 16
    assert type(model[1]) is torch.nn.Linear
    with pytest.raises(ValueError, match="has no linear layer FP8 can take"):
        fp8.convert(torch.nn.Sequential(torch.nn.Linear(10, 10)), "tensorwise")
