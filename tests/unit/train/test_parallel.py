"""Choosing a parallel strategy: the names, the FSDP block finder and its one-line refusals."""

from __future__ import annotations

import pytest
import torch

from forgather.ml.train.args import TrainingArguments
from forgather.ml.train.parallel import STRATEGIES, make_strategy
from forgather.ml.train.parallel.fsdp import FSDPSetupError, transformer_blocks
from forgather.ml.train.trainer import Trainer
from tests.unit.train._tiny import ProgressionDataset, Recorder, tiny_llama

pytestmark = pytest.mark.unit


def test_an_unknown_parallelism_names_the_known_ones(tmp_path):
    with pytest.raises(
        ValueError, match=r"parallelism must be one of \('ddp', 'fsdp', 'diloco'\), got 'fsdpp'"
    ):
        TrainingArguments(output_dir=str(tmp_path), parallelism="fsdpp")
    with pytest.raises(ValueError, match="fsdp_param_dtype must be None or one of"):
        TrainingArguments(output_dir=str(tmp_path), fsdp_param_dtype="bf16")
    assert set(STRATEGIES) == {"ddp", "fsdp", "diloco"}


def test_blocks_are_the_no_split_modules_or_the_longest_uniform_module_list():
    llama = tiny_llama()
    assert [type(b).__name__ for b in transformer_blocks(llama)] == ["LlamaDecoderLayer"] * 2

    class Stack(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.ReLU()])
            self.layers = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(3))

    stack = Stack()
    assert transformer_blocks(stack) == list(stack.layers)


def test_fsdp_refuses_a_model_without_blocks_before_training(tmp_path):
    model = torch.nn.Sequential(torch.nn.Embedding(8, 4), torch.nn.Linear(4, 8))
    args = TrainingArguments(output_dir=str(tmp_path), parallelism="fsdp", max_steps=1)
    trainer = Trainer(args=args, model=model, train_dataset=ProgressionDataset(8))
    with pytest.raises(FSDPSetupError, match="Sequential has no blocks"):
        trainer.train()
    assert not (tmp_path / "checkpoints").exists()
    strategy = make_strategy(args, trainer.env, torch.device("cpu"))
    with pytest.raises(FSDPSetupError, match="shards a model block by block"):
        strategy.prepare(model)


def test_fsdp_in_one_process_trains_exactly_like_ddp(tmp_path):
    losses = {}
    for name in ("ddp", "fsdp"):
        recorder = Recorder()
        args = TrainingArguments(
            output_dir=str(tmp_path / name),
            parallelism=name,
            max_steps=4,
            logging_steps=1,
            per_device_train_batch_size=4,
            learning_rate=1e-2,
            device="cpu",
        )
        trainer = Trainer(
            args=args,
            model_init=tiny_llama,
            train_dataset=ProgressionDataset(16, seed=1),
            callbacks=[recorder],
        )
        trainer.train()
        losses[name] = recorder.step_losses()
    assert losses["fsdp"] == losses["ddp"] and len(losses["ddp"]) == 4
