"""DiLoCo on 2 processes (gloo, torchrun): the algorithm step for step against a one-process
reference, DDP's results when it must equal DDP, and exact resume after kill -9."""

from __future__ import annotations

import shutil

import pytest
import torch

from forgather.ml.train.checkpoint import latest_checkpoint, read_manifest
from forgather.ml.train.data_state import ResumableDistributedSampler
from forgather.ml.train.loss import causal_lm_loss
from tests.unit.train._tiny import (
    RESUME_ARGS,
    ProgressionDataset,
    kill_when,
    launch,
    read_records,
    records_after,
    run,
    tiny_llama,
)

pytestmark = pytest.mark.dist

DILOCO = {
    **RESUME_ARGS,
    "per_device_train_batch_size": 2,
    "parallelism": "diloco",
    "diloco_sync_every": 4,
}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    root = tmp_path_factory.mktemp("diloco")
    run({**DILOCO, "output_dir": str(root / "out")}, root / "straight.jsonl", nproc=2)
    return root


def test_sgd_with_sync_every_step_equals_one_process(tmp_path):
    """Averaging weights after every plain SGD step is averaging gradients: DDP's run."""
    common = {
        **RESUME_ARGS,
        "optim": "sgd",
        "max_grad_norm": None,  # DiLoCo clips each worker's gradient, DDP the averaged one
        "save_strategy": "no",
    }
    run(
        {**common, "per_device_train_batch_size": 4, "output_dir": str(tmp_path / "one")},
        tmp_path / "one.jsonl",
        weights=tmp_path / "one.pt",
    )
    run(
        {
            **common,
            "per_device_train_batch_size": 2,
            "parallelism": "diloco",
            "diloco_sync_every": 1,
            "diloco_outer_lr": 1.0,
            "diloco_outer_momentum": 0.0,
            "output_dir": str(tmp_path / "two"),
        },
        tmp_path / "two.jsonl",
        weights=tmp_path / "two.pt",
        nproc=2,
    )
    one, two = read_records(tmp_path / "one.jsonl"), read_records(tmp_path / "two.jsonl")
    assert len([r for r in two if "loss" in r]) >= 10
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "eval_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)
    wa, wb = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    for name in wa:
        assert torch.allclose(wa[name], wb[name], atol=1e-5), name


def reference_diloco(steps: int, sync_every: int, outer_lr: float, momentum: float, lr: float):
    """DiLoCo written out in one process: two workers, inner SGD, outer Nesterov SGD."""
    torch.manual_seed(0)
    dataset = ProgressionDataset(40, seed=1)
    workers = []
    for rank in range(2):
        torch.manual_seed(42)
        model = tiny_llama()
        sampler = ResumableDistributedSampler(len(dataset), seed=42, rank=rank, world_size=2)
        order = sampler.epoch_indices(0)
        workers.append((model, torch.optim.SGD(model.parameters(), lr=lr), order))
    global_params = [p.detach().clone().requires_grad_(True) for p in workers[0][0].parameters()]
    outer = torch.optim.SGD(global_params, lr=outer_lr, momentum=momentum, nesterov=True)
    for step in range(1, steps + 1):
        for model, inner, order in workers:
            indices = order[(step - 1) * 2 : step * 2]
            ids = torch.stack([dataset[i]["input_ids"] for i in indices])
            causal_lm_loss(model(input_ids=ids).logits, ids).backward()
            inner.step()
            inner.zero_grad()
        if step % sync_every == 0:
            with torch.no_grad():
                locals_ = [list(m.parameters()) for m, _, _ in workers]
                for i, g in enumerate(global_params):
                    g.grad = sum(g - loc[i] for loc in locals_) / 2
                outer.step()
                outer.zero_grad()
                for loc in locals_:
                    for g, p in zip(global_params, loc, strict=True):
                        p.copy_(g)
    return dict(zip([n for n, _ in workers[0][0].named_parameters()], global_params, strict=True))


def test_two_workers_follow_the_algorithm_written_out(tmp_path):
    args = {
        "device": "cpu",
        "max_steps": 6,
        "logging_steps": 1,
        "per_device_train_batch_size": 2,
        "optim": "sgd",
        "learning_rate": 0.05,
        "lr_scheduler_type": "constant",
        "max_grad_norm": None,
        "save_strategy": "no",
        "parallelism": "diloco",
        "diloco_sync_every": 3,
        "diloco_outer_lr": 0.7,
        "diloco_outer_momentum": 0.9,
        "seed": 42,
        "output_dir": str(tmp_path / "out"),
    }
    run(args, tmp_path / "log.jsonl", weights=tmp_path / "w.pt", nproc=2)
    trained = torch.load(tmp_path / "w.pt")
    expected = reference_diloco(steps=6, sync_every=3, outer_lr=0.7, momentum=0.9, lr=0.05)
    for name, tensor in expected.items():
        assert torch.allclose(trained[name], tensor.detach(), atol=1e-5), name


def test_diloco_kill_9_then_resume_is_bit_exact(straight, tmp_path):
    args = {**DILOCO, "output_dir": str(tmp_path / "out")}
    process = launch(args, tmp_path / "killed.jsonl", nproc=2, hang_after_save=8)
    kill_when(process, (tmp_path / "out" / "hanging").exists)
    checkpoint = latest_checkpoint(tmp_path / "out")
    assert checkpoint.name == "checkpoint-8"
    manifest = read_manifest(checkpoint)
    assert manifest["parallelism"] == "diloco"
    # Each worker's inner optimizer state is kept (its moments differ from the other's).
    assert any(name.startswith("optimizer/__1_") for name in manifest["files"])

    run({**args, "resume_from_checkpoint": True}, tmp_path / "resumed.jsonl", nproc=2)
    assert records_after(tmp_path / "resumed.jsonl", 8) == records_after(
        straight / "straight.jsonl", 8
    )


def test_a_diloco_checkpoint_resumes_under_ddp_in_one_process(straight, tmp_path):
    source = straight / "out" / "checkpoints" / "checkpoint-8"
    shutil.copytree(source, tmp_path / "out" / "checkpoints" / "checkpoint-8")
    output = run(
        {
            **RESUME_ARGS,
            "per_device_train_batch_size": 4,
            "output_dir": str(tmp_path / "out"),
            "resume_from_checkpoint": True,
        },
        tmp_path / "resumed.jsonl",
    )
    assert "resharding checkpoint 8 from diloco on 2 process(es) to ddp on 1" in output
    steps = [r["step"] for r in read_records(tmp_path / "resumed.jsonl") if "loss" in r]
    assert steps == [9, 10, 11, 12]
