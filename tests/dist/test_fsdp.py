"""FSDP2 on 2 processes (gloo, torchrun): the one-process results, sharded checkpoints that resume
bit-exactly after kill -9, and checkpoints that reshard between strategies and world sizes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from forgather.ml.train.checkpoint import latest_checkpoint, read_manifest
from tests.unit.train._tiny import (
    RESUME_ARGS,
    assert_resumed_losses,
    kill_when,
    launch,
    read_records,
    records_after,
    run,
)

pytestmark = pytest.mark.dist

# The global batch is 8 per optimizer step either way (see test_ddp.py). The 16 evaluation samples
# make 3 batches of 6, 6 and 4: under FSDP rank 0 evaluates two and rank 1 one (plus a repeat that
# does not count, as a sharded forward needs every rank).
EVAL = {"per_device_eval_batch_size": 6}
SINGLE = {**RESUME_ARGS, **EVAL, "per_device_train_batch_size": 4}
FSDP = {**RESUME_ARGS, **EVAL, "per_device_train_batch_size": 2, "parallelism": "fsdp"}
DDP = {**RESUME_ARGS, **EVAL, "per_device_train_batch_size": 2}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    run(
        {**SINGLE, "output_dir": str(root / "single")},
        root / "single.jsonl",
        weights=root / "single.pt",
    )
    run(
        {**FSDP, "output_dir": str(root / "fsdp")},
        root / "fsdp.jsonl",
        weights=root / "fsdp.pt",
        nproc=2,
    )
    return root


def test_two_process_fsdp_matches_one_process(runs):
    single, fsdp = read_records(runs / "single.jsonl"), read_records(runs / "fsdp.jsonl")
    assert [r["step"] for r in single] == [r["step"] for r in fsdp]
    assert len([r for r in fsdp if "loss" in r]) >= 10
    for a, b in zip(single, fsdp, strict=True):
        for key in ("loss", "grad_norm", "eval_loss", "learning_rate"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)
    wa = torch.load(runs / "single.pt", weights_only=True)
    wb = torch.load(runs / "fsdp.pt", weights_only=True)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.allclose(wa[name], wb[name], atol=5e-5), name


def test_each_rank_writes_its_own_shards_listed_in_the_manifest(runs):
    checkpoint = runs / "fsdp" / "checkpoints" / "checkpoint-12"
    manifest = read_manifest(checkpoint)
    assert (manifest["world_size"], manifest["parallelism"]) == (2, "fsdp")
    for part in ("model", "optimizer"):
        shards = {p.name for p in (checkpoint / part).glob("*.distcp")}
        assert shards == {"__0_0.distcp", "__1_0.distcp"}, part
        assert {f"{part}/{name}" for name in shards} <= set(manifest["files"])
    # Sharded: each rank's model file holds about half of the weights.
    sizes = [(checkpoint / "model" / f"__{r}_0.distcp").stat().st_size for r in (0, 1)]
    assert max(sizes) < 0.75 * sum(sizes)
    # The model's own class, not FSDP2's dynamic FSDPLlamaForCausalLM subclass.
    assert manifest["model_class"] == "LlamaForCausalLM"
    config = json.loads((checkpoint / "hf" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]


def test_fsdp_kill_9_then_resume_is_bit_exact(runs, tmp_path):
    args = {**FSDP, "output_dir": str(tmp_path / "out")}
    process = launch(args, tmp_path / "killed.jsonl", nproc=2, hang_after_save=8)
    kill_when(process, (tmp_path / "out" / "hanging").exists)
    assert latest_checkpoint(tmp_path / "out").name == "checkpoint-8"

    run({**args, "resume_from_checkpoint": True}, tmp_path / "resumed.jsonl", nproc=2)
    assert records_after(tmp_path / "resumed.jsonl", 8) == records_after(runs / "fsdp.jsonl", 8)


def resume_elsewhere(runs, tmp_path, args: dict, nproc: int) -> str:
    """Resume the FSDP run's checkpoint 8 under `args` on `nproc` processes."""
    source = runs / "fsdp" / "checkpoints" / "checkpoint-8"
    shutil.copytree(source, tmp_path / "out" / "checkpoints" / "checkpoint-8")
    output = run(
        {**args, "output_dir": str(tmp_path / "out"), "resume_from_checkpoint": True},
        tmp_path / "resumed.jsonl",
        nproc=nproc,
    )
    return output


def test_fsdp_checkpoint_resumes_in_one_process(runs, tmp_path):
    output = resume_elsewhere(runs, tmp_path, SINGLE, 1)
    assert "resharding checkpoint 8 from fsdp on 2 process(es) to ddp on 1" in output
    assert_resumed_losses(runs / "fsdp.jsonl", tmp_path / "resumed.jsonl")


def test_fsdp_checkpoint_resumes_under_ddp(runs, tmp_path):
    output = resume_elsewhere(runs, tmp_path, DDP, 2)
    assert "from fsdp on 2 process(es) to ddp on 2" in output
    assert_resumed_losses(runs / "fsdp.jsonl", tmp_path / "resumed.jsonl")


@pytest.mark.parametrize(
    ("name", "overrides", "nproc"),
    [
        # activation checkpointing recomputes each block's forward inside the sharded backward
        ("fsdp-recompute", {"gradient_checkpointing": True}, 2),
        # torch.compile of the sharded model (inductor on CPU)
        ("fsdp-compiled", {"torch_compile": True}, 2),
        # HSDP: 2 replica groups of 2 shards (4 ranks x 1 sample x 2 micro-batches = 8 per step)
        ("hsdp", {"fsdp_replicate": 2, "per_device_train_batch_size": 1}, 4),
    ],
)
def test_fsdp_variants_match_one_process(runs, name, overrides, nproc):
    run(
        {**FSDP, **overrides, "output_dir": str(runs / name)},
        runs / f"{name}.jsonl",
        nproc=nproc,
    )
    single, other = read_records(runs / "single.jsonl"), read_records(runs / f"{name}.jsonl")
    assert [r["step"] for r in single] == [r["step"] for r in other]
    for a, b in zip(single, other, strict=True):
        for key in ("loss", "grad_norm", "eval_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (name, a["step"], key)


def test_the_fused_loss_under_fsdp_matches_the_loss_from_logits(tmp_path):
    """A forgather model computes its fused loss inside FSDP's forward, where the head's weight is
    whole: the same losses, gradient norms and evaluation losses as the loss from the logits."""
    records = {}
    for fused in ("off", "torch"):
        run(
            {**FSDP, "fused_loss": fused, "output_dir": str(tmp_path / fused)},
            tmp_path / f"{fused}.jsonl",
            nproc=2,
            model="forgather",
        )
        records[fused] = read_records(tmp_path / f"{fused}.jsonl")
    assert len([r for r in records["torch"] if "loss" in r]) >= 10
    for a, b in zip(records["off"], records["torch"], strict=True):
        for key in ("loss", "grad_norm", "eval_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
