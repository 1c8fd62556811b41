"""Training on a stream: exact resume after `kill -9` (0 and 2 dataloader workers), evaluation from a
stream, and the set-up errors a user can make."""

from __future__ import annotations

import pytest
import torch

from forgather.ml.data.streaming import token_stream
from forgather.ml.train.args import TrainingArguments
from forgather.ml.train.checkpoint import CheckpointError, latest_checkpoint
from forgather.ml.train.trainer import Trainer
from tests.unit.train._tiny import (
    RESUME_ARGS,
    ProgressionDataset,
    kill_when,
    launch,
    records_after,
    run,
    tiny_llama,
    write_progression_stream,
)

pytestmark = pytest.mark.unit


def straight_kill_resume(tmp_path, args: dict, nproc: int = 1) -> None:
    """A straight streaming run, one killed (-9) after checkpoint 8 and resumed: the per-step losses,
    grad norms, learning rates, token counts and eval losses after step 8 are identical."""
    data = write_progression_stream(tmp_path / "data")  # 40 rows: each rank reads it ~2-3 times
    run({**args, "output_dir": str(tmp_path / "a")}, tmp_path / "a.jsonl", stream=data, nproc=nproc)
    out = tmp_path / "b"
    process = launch(
        {**args, "output_dir": str(out)}, tmp_path / "b.jsonl", stream=data, nproc=nproc,
        hang_after_save=8,
    )  # fmt: skip
    kill_when(process, (out / "hanging").exists)
    assert latest_checkpoint(out).name == "checkpoint-8"
    ranks = {p.name for p in (out / "checkpoints" / "checkpoint-8").glob("data_state_rank*.pt")}
    assert ranks == {f"data_state_rank{r}.pt" for r in range(nproc)}
    run(
        {**args, "output_dir": str(out), "resume_from_checkpoint": True},
        tmp_path / "c.jsonl",
        stream=data,
        nproc=nproc,
    )
    straight = records_after(tmp_path / "a.jsonl", 8)
    assert [r["step"] for r in straight if "loss" in r] == [9, 10, 11, 12]
    assert records_after(tmp_path / "c.jsonl", 0) == straight


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_kill_9_then_resume_on_a_stream_is_bit_exact(tmp_path, workers):
    straight_kill_resume(tmp_path, {**RESUME_ARGS, "dataloader_num_workers": workers})


def trainer(tmp_path, train_dataset, eval_dataset=None, **overrides):
    settings = {
        "output_dir": str(tmp_path / "out"), "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4, "max_steps": 3, "logging_steps": 1,
        "save_strategy": "no", "device": "cpu", "learning_rate": 1e-2,
    }  # fmt: skip
    return Trainer(
        args=TrainingArguments(**{**settings, **overrides}),
        model_init=lambda: tiny_llama(32),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
    )


def test_a_stream_without_max_steps_is_refused_by_name(tmp_path):
    stream = token_stream(str(write_progression_stream(tmp_path / "data")))
    with pytest.raises(ValueError, match=r"trainer_args.max_steps: a streaming train_dataset"):
        trainer(tmp_path, stream, max_steps=-1).train()


def test_evaluation_from_a_stream_equals_evaluation_of_the_same_rows(tmp_path):
    """One pass over the evaluation stream, in order: the same mean loss as the map-style rows."""
    torch.manual_seed(0)
    data = write_progression_stream(tmp_path / "data", files=2, rows=6)
    rows = ProgressionDataset(12, seed=1)  # what write_progression_stream wrote, in file order
    run = trainer(tmp_path, rows)
    from_stream = run.evaluate(token_stream(str(data)))
    from_rows = run.evaluate(rows)
    assert from_stream["eval_batches"] == from_rows["eval_batches"] == 3
    assert from_stream["eval_loss"] == pytest.approx(from_rows["eval_loss"], rel=1e-6)
    capped = trainer(tmp_path, rows, max_eval_steps=2).evaluate(token_stream(str(data)))
    assert capped["eval_batches"] == 2


def test_a_map_style_checkpoint_does_not_resume_a_stream(tmp_path):
    data = write_progression_stream(tmp_path / "data")
    trainer(tmp_path, ProgressionDataset(16), save_strategy="steps", save_steps=3).train()
    resumed = trainer(tmp_path, token_stream(str(data)), resume_from_checkpoint=True, max_steps=6)
    with pytest.raises(CheckpointError, match="trained on a map-style dataset, this run streams"):
        resumed.train()
