"""Every optimizer of forgather.ml.optim under FSDP2 on 2 processes (gloo, torchrun), at once: a
Multiopt gives each some of the tiny Llama's parameters (Muon, Apollo with random and online-PCA
projectors, Apollo-mini, SinkGD, Adafactor, AdamW). The sharded run logs the one-process losses,
its sharded checkpoint resumes bit-exactly, and it reshards into one process; on two pipeline stages
each stage steps its own layers' optimizers to the same losses."""

from __future__ import annotations

import pytest

from tests.unit.train._tiny import (
    RESUME_ARGS,
    assert_resumed_losses,
    read_records,
    records_after,
    run,
)

pytestmark = pytest.mark.dist

ARGS = {**RESUME_ARGS, "eval_strategy": "no", "learning_rate": 3e-3}
SINGLE = {**ARGS, "per_device_train_batch_size": 4}
FSDP = {**ARGS, "per_device_train_batch_size": 2, "parallelism": "fsdp"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("optimizers")
    run(
        {**SINGLE, "output_dir": str(root / "single")}, root / "single.jsonl", mixed_optimizers=True
    )
    run(
        {**FSDP, "output_dir": str(root / "fsdp")},
        root / "fsdp.jsonl",
        nproc=2,
        mixed_optimizers=True,
    )
    return root


def test_every_optimizer_sharded_logs_the_one_process_losses(runs):
    single, fsdp = read_records(runs / "single.jsonl"), read_records(runs / "fsdp.jsonl")
    losses = [r["loss"] for r in single if "loss" in r]
    assert len(losses) == 12 and losses[-1] < losses[0]
    assert [r["step"] for r in single] == [r["step"] for r in fsdp]
    for a, b in zip(single, fsdp, strict=True):
        for key in ("loss", "grad_norm"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4), (a["step"], key)


def test_every_optimizer_resumes_sharded_bit_exactly_and_reshards_into_one_process(runs):
    checkpoint = runs / "fsdp" / "checkpoints" / "checkpoint-8"
    resumed = runs / "resumed.jsonl"
    run(
        {**FSDP, "output_dir": str(runs / "fsdp"), "resume_from_checkpoint": str(checkpoint)},
        resumed,
        nproc=2,
        mixed_optimizers=True,
    )
    assert records_after(resumed, 8) == records_after(runs / "fsdp.jsonl", 8)
    one = runs / "one.jsonl"
    run(
        {**SINGLE, "output_dir": str(runs / "one"), "resume_from_checkpoint": str(checkpoint)},
        one,
        mixed_optimizers=True,
    )
    assert_resumed_losses(runs / "fsdp.jsonl", one)


def test_every_optimizer_on_two_pipeline_stages_logs_the_one_process_losses(tmp_path):
    """Each stage steps the optimizers of its own layers (our causal LM split in two)."""
    single = {**ARGS, "per_device_train_batch_size": 4}
    run({**single, "output_dir": str(tmp_path / "single")}, tmp_path / "single.jsonl",
        mixed_optimizers=True, model="forgather")  # fmt: skip
    run(
        {**single, "parallelism": "pipeline", "output_dir": str(tmp_path / "pipeline")},
        tmp_path / "pipeline.jsonl",
        nproc=2,
        mixed_optimizers=True,
        model="forgather",
    )
    one, two = read_records(tmp_path / "single.jsonl"), read_records(tmp_path / "pipeline.jsonl")
    assert len([r for r in one if "loss" in r]) == 12
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "grad_norm"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4), (a["step"], key)
