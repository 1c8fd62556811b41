"""Every optimizer `trainer_args.optim` names trains through the trainer (gradient accumulation,
clipping, a schedule) and resumes from a checkpoint bit-exactly."""

from __future__ import annotations

import pytest
import torch

from forgather.ml.optim import OPTIMIZERS
from forgather.ml.train.args import TrainingArguments
from forgather.ml.train.trainer import Trainer, TrainerSetupError
from tests.unit.train._tiny import ProgressionDataset, Recorder, tiny_llama

pytestmark = pytest.mark.unit

# Learning rates at which each optimizer learns the progressions in a few steps.
LEARNING_RATES = {"sgd": 0.5, "adafactor": 1e-2}


def _trainer(tmp_path, optim, **overrides):
    fields = dict(
        output_dir=str(tmp_path / optim),
        optim=optim,
        max_steps=8,
        logging_steps=1,
        save_steps=4,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=LEARNING_RATES.get(optim, 3e-3),
        weight_decay=0.01,
        lr_scheduler_type="cosine",
        warmup_steps=2,
        max_grad_norm=1.0,
        device="cpu",
    )
    recorder = Recorder()
    trainer = Trainer(
        args=TrainingArguments(**{**fields, **overrides}),
        model_init=tiny_llama,
        train_dataset=ProgressionDataset(64),
        callbacks=[recorder],
    )
    return trainer, recorder


@pytest.mark.parametrize("optim", OPTIMIZERS)
def test_each_named_optimizer_trains_and_resumes_exactly(tmp_path, optim):
    straight, log = _trainer(tmp_path, optim)
    straight.train()
    losses = log.step_losses()
    assert sorted(losses) == list(range(1, 9))
    assert losses[8] < losses[1], losses
    resumed, resumed_log = _trainer(
        tmp_path,
        optim,
        resume_from_checkpoint=str(tmp_path / optim / "checkpoints" / "checkpoint-4"),
        overwrite_output_dir=True,
    )
    resumed.train()
    assert resumed_log.step_losses() == {s: v for s, v in losses.items() if s > 4}
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name


def test_optim_kwargs_reach_the_named_optimizer(tmp_path):
    trainer, _ = _trainer(tmp_path, "muon", max_steps=1, optim_kwargs={"momentum": 0.8})
    trainer.train()
    muon = trainer.optimizer.optimizers[0]
    assert type(muon).__name__ == "Muon" and muon.param_groups[0]["momentum"] == 0.8


def test_an_unknown_optim_name_is_one_error_listing_the_known_ones(tmp_path):
    with pytest.raises(
        ValueError, match=r"optim must be one of \('adamw', 'sgd', 'muon', 'apollo'"
    ):
        TrainingArguments(output_dir=str(tmp_path), optim="adam")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"momentom": 0.9}, "unexpected keyword argument 'momentom'"),
        ({"momentum": 2}, r"Muon momentum must be in \[0, 1\), got 2"),
    ],
)
def test_bad_optim_kwargs_are_one_error_naming_the_fields(tmp_path, kwargs, message):
    trainer, _ = _trainer(tmp_path, "muon", max_steps=1, optim_kwargs=kwargs)
    with pytest.raises(TrainerSetupError, match=r"trainer_args\.optim 'muon' with "
                       rf"trainer_args\.optim_kwargs .*{message}"):  # fmt: skip
        trainer.train()
    assert not (tmp_path / "muon" / "checkpoints").exists()


def test_a_multiopt_factory_whose_patterns_miss_parameters_is_one_error(tmp_path):
    import functools

    from forgather.ml.optim import multiopt

    trainer, _ = _trainer(tmp_path, "adamw", max_steps=1)
    trainer.optimizer_factory = functools.partial(
        multiopt, groups=[{"pattern": "self_attn", "optimizer": torch.optim.AdamW}]
    )
    with pytest.raises(TrainerSetupError, match="optimizer_factory: multiopt: no group's pattern"):
        trainer.train()
