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


def train(tmp_path, callbacks=(), **overrides) -> tuple[Trainer, Recorder]:
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
        callbacks=[recorder, *callbacks],
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


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    from forgather.ml.unwrap import unwrap_model

    return {
        k: v.detach().float().cpu() for k, v in unwrap_model(trainer.model).state_dict().items()
    }


def test_the_fast_path_tracks_the_eager_loss_curve_within_bf16_tolerance(tmp_path):
    """torch.compile, the fused loss, TF32 and the flash SDPA kernel change how, not what."""
    # a learning rate gentle enough that bf16 rounding differences do not fork the trajectory
    common = {"save_strategy": "no", "max_steps": 12, "learning_rate": 3e-3}
    _, eager = train(tmp_path / "eager", **common, fused_loss="off")
    _, fast = train(
        tmp_path / "fast",
        **common,
        torch_compile=True,
        fused_loss="auto",
        tf32=True,
        sdpa_backend="flash",
    )
    eager_losses, fast_losses = eager.step_losses(), fast.step_losses()
    assert sorted(fast_losses) == sorted(eager_losses) == list(range(1, 13))
    assert fast_losses[1] == pytest.approx(eager_losses[1], abs=0.02)  # the same weights
    for step, loss in eager_losses.items():
        assert fast_losses[step] == pytest.approx(loss, rel=0.05), step
    assert fast_losses[12] < fast_losses[1] - 0.1  # and it learns


def test_optimizer_in_backward_gives_the_weights_of_the_normal_step(tmp_path):
    common = {"save_strategy": "no", "bf16": False, "max_grad_norm": None, "tf32": False}
    normal, _ = train(tmp_path / "normal", **common)
    in_backward, _ = train(tmp_path / "in_backward", **common, optimizer_in_backward=True)
    expected, got = _weights(normal), _weights(in_backward)
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def test_fp8_trains_in_float8_and_its_loss_tracks_bf16(tmp_path):
    pytest.importorskip("torchao.float8", reason="fp8 needs torchao")
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 tensor cores need compute capability 8.9+")
    common = {"save_strategy": "no", "max_steps": 12, "torch_compile": True}
    _, bf16 = train(tmp_path / "bf16", **common)
    trainer, fp8 = train(tmp_path / "fp8", **common, fp8="tensorwise")
    # every projection of the 4 blocks (q, k, v, o, gate, up, down), never the head
    assert len(trainer.fp8_layers) == 4 * 7
    assert not any("lm_head" in name for name in trainer.fp8_layers)
    bf16_losses, fp8_losses = bf16.step_losses(), fp8.step_losses()
    for step, loss in bf16_losses.items():
        assert fp8_losses[step] == pytest.approx(loss, rel=0.1, abs=0.1), step
    assert fp8_losses[12] < fp8_losses[1] - 0.5


def test_expandable_segments_give_the_steps_expandable_memory_and_are_put_back(tmp_path):
    class Segments:
        def __init__(self):
            self.expandable = []

        def on_step_end(self, args, state, control, **kwargs):
            segments = torch.cuda.memory_snapshot()
            self.expandable.append(any(s.get("is_expandable") for s in segments))

    seen = Segments()
    train(tmp_path, callbacks=[seen], save_strategy="no", expandable_segments=True)
    assert seen.expandable and all(seen.expandable)
    from forgather.ml.train.fast_path import allocator_settings

    assert "expandable_segments:True" not in allocator_settings()
