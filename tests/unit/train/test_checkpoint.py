"""CheckpointManager: atomic layout, manifest, pruning, finding, and loud, harmless load failures."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from forgather.ml.optim import get_lr_scheduler
from forgather.ml.train.checkpoint import (
    FORMAT,
    CheckpointError,
    CheckpointManager,
    best_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    model_digest,
    read_manifest,
    resolve_checkpoint,
)
from forgather.ml.train.rng import get_rng_state
from forgather.ml.train.run_lock import machine_key

pytestmark = pytest.mark.unit


class Net(torch.nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.proj = torch.nn.Linear(width, width)
        self.norm = torch.nn.LayerNorm(width)


def parts(width: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    model = Net(width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = get_lr_scheduler("cosine", optimizer, 2, 20)
    return model, optimizer, scheduler


def train_a_bit(model, optimizer, scheduler, steps=3):
    for _ in range(steps):
        model.norm(model.proj(torch.randn(2, model.proj.in_features))).sum().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


def save(manager, step, model, optimizer, scheduler, metrics=None):
    return manager.save(
        step=step,
        epoch=step / 10,
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        trainer_state={"global_step": step},
        data_state={"epoch": 0, "batches_consumed": step},
        rng_state=get_rng_state(),
        metrics=metrics,
    )


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    return {
        str(p.relative_to(root)): (
            p.stat().st_size,
            p.stat().st_mtime_ns,
            hashlib.sha256(p.read_bytes()).hexdigest(),
        )
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_save_writes_the_contract_layout_and_manifest(tmp_path):
    model, optimizer, scheduler = parts()
    path = save(CheckpointManager(tmp_path), 7, model, optimizer, scheduler, {"eval_loss": 1.5})
    assert path == tmp_path / "checkpoints" / "checkpoint-7"
    names = {p.name for p in path.iterdir()}
    assert names == {
        "manifest.json",
        "model",  # DCP directories: .metadata and this rank's __0_0.distcp
        "optimizer",
        "scheduler.pt",
        "trainer_state.json",
        "data_state.pt",
        "rng_state_rank0.pt",
    }
    manifest = read_manifest(path)
    assert manifest["format"] == FORMAT and manifest["complete"] is True
    assert (manifest["step"], manifest["epoch"], manifest["world_size"]) == (7, 0.7, 1)
    assert manifest["model_digest"] == model_digest(model) and manifest["model_class"] == "Net"
    assert manifest["metrics"] == {"eval_loss": 1.5}
    assert set(manifest["versions"]) == {"forgather", "torch", "transformers"}
    for key in ("created", "config_digest", "git_sha", "image_digest"):
        assert key in manifest
    assert {"model/.metadata", "model/__0_0.distcp", "optimizer/__0_0.distcp"} <= set(
        manifest["files"]
    )
    for name, info in manifest["files"].items():
        data = (path / name).read_bytes()
        assert info == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")]


def test_load_restores_weights_optimizer_and_scheduler_exactly(tmp_path):
    model, optimizer, scheduler = parts()
    train_a_bit(model, optimizer, scheduler)
    manager = CheckpointManager(tmp_path)
    path = save(manager, 3, model, optimizer, scheduler)
    model2, optimizer2, scheduler2 = parts(seed=1)
    loaded = manager.load(path, model=model2, optimizer=optimizer2, lr_scheduler=scheduler2)
    assert loaded.trainer_state == {"global_step": 3}
    assert loaded.data_state == {"epoch": 0, "batches_consumed": 3}
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert scheduler2.state_dict() == scheduler.state_dict()
    torch.manual_seed(9)
    train_a_bit(model, optimizer, scheduler)
    torch.manual_seed(9)
    train_a_bit(model2, optimizer2, scheduler2)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_keep_last_n_by_step_number_and_keep_best(tmp_path):
    model, optimizer, scheduler = parts()
    manager = CheckpointManager(tmp_path, save_total_limit=2, keep_best=True)
    losses = {10: 3.0, 2: 1.0, 4: 2.0, 30: 2.5}
    for step in (10, 2, 4, 30):  # written out of order: pruning must go by step number
        save(manager, step, model, optimizer, scheduler, {"eval_loss": losses[step]})
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "checkpoint-2",
        "checkpoint-10",
        "checkpoint-30",
    ]
    assert best_checkpoint(tmp_path).name == "checkpoint-2"
    assert latest_checkpoint(tmp_path).name == "checkpoint-30"
    plain = CheckpointManager(tmp_path / "b", save_total_limit=1)
    for step in (1, 2, 3):
        save(plain, step, model, optimizer, scheduler)
    assert [p.name for p in plain.list()] == ["checkpoint-3"]


def test_incomplete_and_temporary_directories_are_ignored_and_cleaned(tmp_path):
    model, optimizer, scheduler = parts()
    manager = CheckpointManager(tmp_path)
    save(manager, 5, model, optimizer, scheduler)
    root = tmp_path / "checkpoints"
    (root / "checkpoint-9").mkdir()  # no manifest
    (root / "checkpoint-8").mkdir()
    (root / "checkpoint-8" / "manifest.json").write_text(
        json.dumps({"format": FORMAT, "complete": False})
    )
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (root / f".tmp-checkpoint-12-{dead.stdout.strip()}").mkdir()
    (root / f".tmp-checkpoint-13-{os.getppid()}").mkdir()  # a live process's write: left alone
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-5"]
    assert resolve_checkpoint(tmp_path, True).name == "checkpoint-5"
    assert resolve_checkpoint(tmp_path, "latest").name == "checkpoint-5"
    removed = manager.clean_temp_dirs()
    assert [p.name for p in removed] == [f".tmp-checkpoint-12-{dead.stdout.strip()}"]
    assert (root / f".tmp-checkpoint-13-{os.getppid()}").exists()
    with pytest.raises(CheckpointError, match="incomplete"):
        manager.load(root / "checkpoint-8", model=model)
    with pytest.raises(CheckpointError, match="no manifest.json"):
        manager.load(root / "checkpoint-9", model=model)


def test_temp_dirs_name_their_machine_and_only_this_machines_dead_writers_are_cleaned(tmp_path):
    """Pids repeat across hosts, containers and boots: a temp dir names its writer's machine
    (host name + boot id) beside the pid, and without the run lock a writer elsewhere is trusted
    to be writing until its dir has been untouched for a day (a shared filesystem that cannot
    lock; another host's checkpoint in progress must survive)."""
    manager = CheckpointManager(tmp_path)
    root = tmp_path / "checkpoints"
    root.mkdir(parents=True)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    here, elsewhere = machine_key(), "0123456789ab"
    assert here != elsewhere and manager.writer == f"{here}-{os.getpid()}"
    names = {
        "mine_dead": f".tmp-checkpoint-12-{here}-{dead}",
        "mine_alive": f".tmp-checkpoint-13-{here}-{os.getppid()}",
        "elsewhere_busy": f".tmp-checkpoint-14-{elsewhere}-{dead}",
        "elsewhere_stale": f".tmp-delete-checkpoint-3-{elsewhere}-{dead}",
    }
    for name in names.values():
        (root / name).mkdir()
    two_days_ago = time.time() - 2 * 86400
    os.utime(root / names["elsewhere_stale"], (two_days_ago, two_days_ago))
    removed = sorted(p.name for p in manager.clean_temp_dirs())
    assert removed == sorted([names["mine_dead"], names["elsewhere_stale"]])
    assert (root / names["elsewhere_busy"]).is_dir() and (root / names["mine_alive"]).is_dir()
    # while the run holds the lock, no other run writes here: everything else is a leftover
    manager._lock.acquire()
    try:
        assert sorted(p.name for p in manager.clean_temp_dirs()) == sorted(
            [names["mine_alive"], names["elsewhere_busy"]]
        )
    finally:
        manager._lock.release()


def test_resolve_fails_loudly_without_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        resolve_checkpoint(tmp_path, True)
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path, tmp_path / "nope")


def corrupt(path: Path, how: str) -> None:
    if how == "missing":
        (path / "optimizer" / "__0_0.distcp").unlink()
    elif how == "truncated":
        (path / "scheduler.pt").write_bytes(b"x")
    elif how == "flipped":
        data = bytearray((path / "model" / "__0_0.distcp").read_bytes())
        data[-1] ^= 1
        (path / "model" / "__0_0.distcp").write_bytes(bytes(data))
    elif how == "legacy":
        manifest = read_manifest(path)
        manifest["format"] = "forgather-checkpoint/1"
        (path / "manifest.json").write_text(json.dumps(manifest))
    elif how == "incomplete":
        manifest = read_manifest(path)
        manifest["complete"] = False
        (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("missing", "missing file optimizer/__0_0.distcp"),
        ("truncated", "scheduler.pt has 1 bytes"),
        ("flipped", "model/__0_0.distcp is corrupt"),
        ("legacy", "loads for inference but cannot be resumed"),
        ("incomplete", "incomplete"),
        ("other_model", "model_digest mismatch"),
    ],
)
def test_load_failures_are_one_line_errors_that_change_nothing(tmp_path, how, message):
    model, optimizer, scheduler = parts()
    path = save(CheckpointManager(tmp_path), 3, model, optimizer, scheduler)
    corrupt(path, how)
    before = snapshot(tmp_path)
    target, target_optimizer, target_scheduler = parts(
        width=8 if how == "other_model" else 4, seed=1
    )
    weights = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match=message) as info:
        CheckpointManager(tmp_path).load(
            path, model=target, optimizer=target_optimizer, lr_scheduler=target_scheduler
        )
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert snapshot(tmp_path) == before
    assert all(torch.equal(weights[k], v) for k, v in target.state_dict().items())
