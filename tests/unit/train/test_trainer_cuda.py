"""The trainer on one CUDA device: bf16 training, sharded (DCP) checkpoints, resume, consolidation.

Skipped without CUDA (the `gpu` marker); run on a lent GPU with `python -m pytest -q -m gpu`.
"""

from __future__ import annotations

import pytest
import torch

from forgather.ml.train.args import TrainingArguments
from forgather.ml.train.checkpoint import latest_checkpoint, read_manifest
from forgather.ml.train.trainer import Trainer
from tests.unit.train._tiny import ProgressionDataset, Recorder, tiny_forgather

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def train(tmp_path, **overrides) -> tuple[Trainer, Recorder]:
    recorder = Recorder()
    args = TrainingArguments(
        **{
            "output_dir": str(tmp_path / "out"),
            "max_steps": 8,
            "save_steps": 4,
            "logging_steps": 1,
            "per_device_train_batch_size": 4,
            "learning_rate": 1e-2,
            "bf16": True,
            **overrides,
        }
    )
    trainer = Trainer(
        args=args,
        model_init=tiny_forgather,
        train_dataset=ProgressionDataset(64, seed=1),
        callbacks=[recorder],
    )
    trainer.train()
    return trainer, recorder


def test_bf16_training_on_cuda_saves_dcp_checkpoints_that_resume(tmp_path):
    trainer, straight = train(tmp_path)
    assert trainer.device.type == "cuda"
    losses = straight.step_losses()
    assert losses[8] < losses[1]
    checkpoint = latest_checkpoint(tmp_path / "out")
    manifest = read_manifest(checkpoint)
    assert any(name.startswith("model/") for name in manifest["files"])

    import shutil

    shutil.rmtree(tmp_path / "out" / "checkpoints" / "checkpoint-8")
    _, resumed = train(tmp_path, resume_from_checkpoint=True)
    again = resumed.step_losses()
    assert sorted(again) == [5, 6, 7, 8]
    for step in again:  # CUDA kernels need not be deterministic: equal to rounding
        assert again[step] == pytest.approx(losses[step], rel=1e-3), step
