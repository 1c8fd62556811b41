"""Two-process DDP (gloo, torchrun): same results as one process, and bit-exact resume after kill -9."""

from __future__ import annotations

import pytest
import torch

from forgather.ml.train.checkpoint import latest_checkpoint
from tests.unit.train._tiny import (
    RESUME_ARGS,
    assert_resumed_losses,
    kill_when,
    launch,
    read_records,
    run,
)

pytestmark = pytest.mark.dist

# The global batch is 8 per optimizer step either way: 1 process × 4 × accumulation 2,
# or 2 processes × 2 × accumulation 2 (which exercises no_sync on the first micro-batch).
SINGLE = {**RESUME_ARGS, "per_device_train_batch_size": 4}
DDP = {**RESUME_ARGS, "per_device_train_batch_size": 2}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    run(
        {**SINGLE, "output_dir": str(root / "single")},
        root / "single.jsonl",
        weights=root / "single.pt",
    )
    output = run(
        {**DDP, "output_dir": str(root / "ddp")},
        root / "ddp.jsonl",
        weights=root / "ddp.pt",
        nproc=2,
    )
    (root / "ddp.out").write_text(output)
    return root


def test_every_rank_says_it_joined_after_an_all_reduce(runs):
    output = (runs / "ddp.out").read_text()
    joined = sorted(line for line in output.splitlines() if "joined the gloo group" in line)
    assert len(joined) == 2, output[-3000:]
    for rank, line in enumerate(joined):
        assert f"rank {rank} of 2 (local rank {rank} of 2)" in line
        assert line.endswith("all-reduce over 2 ranks ok")


def test_two_process_ddp_matches_one_process(runs):
    single, ddp = read_records(runs / "single.jsonl"), read_records(runs / "ddp.jsonl")
    assert [r["step"] for r in single] == [r["step"] for r in ddp]
    for a, b in zip(single, ddp, strict=True):
        for key in ("loss", "grad_norm", "eval_loss", "learning_rate"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)
        if "tokens" in a:
            assert a["tokens"] == b["tokens"]
    wa = torch.load(runs / "single.pt", weights_only=True)
    wb = torch.load(runs / "ddp.pt", weights_only=True)
    for name in wa:
        assert torch.allclose(wa[name], wb[name], atol=5e-5), name
    checkpoint = runs / "ddp" / "checkpoints" / "checkpoint-12"
    assert {p.name for p in checkpoint.glob("rng_state_rank*.pt")} == {
        "rng_state_rank0.pt",
        "rng_state_rank1.pt",
    }


def test_two_process_kill_9_then_resume_is_bit_exact(runs, tmp_path):
    args = {**DDP, "output_dir": str(tmp_path / "out")}
    process = launch(args, tmp_path / "killed.jsonl", nproc=2, hang_after_save=8)
    kill_when(process, (tmp_path / "out" / "hanging").exists)
    assert latest_checkpoint(tmp_path / "out").name == "checkpoint-8"

    run({**args, "resume_from_checkpoint": True}, tmp_path / "resumed.jsonl", nproc=2)
    keys = ("loss", "grad_norm", "learning_rate", "epoch", "tokens", "eval_loss", "step")
    straight = [
        {k: r[k] for k in keys if k in r}
        for r in read_records(runs / "ddp.jsonl")
        if r["step"] > 8 and "train_runtime" not in r
    ]
    resumed = [
        {k: r[k] for k in keys if k in r}
        for r in read_records(tmp_path / "resumed.jsonl")
        if "train_runtime" not in r
    ]
    assert resumed == straight


def test_a_two_process_checkpoint_resumes_in_one_process(runs, tmp_path):
    """Resharding: DDP on 2 ranks x 2 -> 1 process x 4 (the same global batch) continues the run."""
    import shutil

    shutil.copytree(runs / "ddp" / "checkpoints", tmp_path / "out" / "checkpoints")
    for later in ("checkpoint-12",):
        shutil.rmtree(tmp_path / "out" / "checkpoints" / later)
    output = run(
        {**SINGLE, "output_dir": str(tmp_path / "out"), "resume_from_checkpoint": True},
        tmp_path / "resumed.jsonl",
    )
    assert "resharding checkpoint 8 from ddp on 2 process(es) to ddp on 1" in output
    assert_resumed_losses(runs / "ddp.jsonl", tmp_path / "resumed.jsonl")
