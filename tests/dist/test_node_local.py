"""Checkpoints on nodes without a shared filesystem: two torchrun "nodes" on this machine, each with
its own output directory (as two machines with local disks), in one gloo group.

Each node keeps the shards its ranks wrote plus a copy of the shared files; a resume on the same
nodes exchanges what each lacks and continues bit-exactly; `save_on_each_node` gives every node the
whole checkpoint, so one node alone can resume (what an elastic restart needs after losing a node).
"""

from __future__ import annotations

import shutil
import socket

import pytest

from forgather.ml.train.checkpoint_format import check_files, latest_checkpoint, read_manifest
from tests.unit.train._tiny import (
    RESUME_ARGS,
    assert_resumed_losses,
    kill_9,
    launch,
    records_after,
    run,
)

pytestmark = pytest.mark.dist

FSDP = {**RESUME_ARGS, "per_device_train_batch_size": 2, "parallelism": "fsdp"}
DDP = {**RESUME_ARGS, "per_device_train_batch_size": 2}
KEYS = ("loss", "grad_norm", "learning_rate", "eval_loss", "step")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def two_nodes(root, args: dict, name: str, **kwargs) -> list:
    """Start both nodes of a 2-node x 1-process job; node i writes to root/node<i>/<name>."""
    port = free_port()
    return [
        launch(
            {**args, "output_dir": str(root / f"node{i}" / name)},
            root / f"node{i}" / f"{name}.jsonl",
            node=(i, 2, port),
            **kwargs,
        )
        for i in range(2)
    ]


def finish(processes) -> list[str]:
    outputs = []
    for process in processes:
        output, _ = process.communicate(timeout=300)
        outputs.append(output)
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-4000:]
    return outputs


def test_fsdp_on_node_local_disks_keeps_shards_per_node_and_resumes_bit_exactly(tmp_path):
    run({**FSDP, "output_dir": str(tmp_path / "straight")}, tmp_path / "straight.jsonl", nproc=2)

    processes = two_nodes(tmp_path, FSDP, "out", hang_after_save=8)
    marker = tmp_path / "node0" / "out" / "hanging"
    try:
        import time

        deadline = time.monotonic() + 180
        while not marker.exists():
            assert all(p.poll() is None for p in processes), processes[0].stdout.read()[-4000:]
            assert time.monotonic() < deadline, "checkpoint 8 was not written within 180 s"
            time.sleep(0.05)
    finally:
        for process in processes:
            kill_9(process)
    node0, node1 = (tmp_path / f"node{i}" / "out" for i in range(2))
    assert latest_checkpoint(node0).name == latest_checkpoint(node1).name == "checkpoint-8"
    ckpt0, ckpt1 = (n / "checkpoints" / "checkpoint-8" for n in (node0, node1))
    manifest = read_manifest(ckpt0)
    assert manifest == read_manifest(ckpt1)
    assert manifest["world_size"] == 2 and manifest["parallelism"] == "fsdp"
    files0 = {p.relative_to(ckpt0).as_posix() for p in ckpt0.rglob("*") if p.is_file()}
    files1 = {p.relative_to(ckpt1).as_posix() for p in ckpt1.rglob("*") if p.is_file()}
    # each node has its own rank's shards and RNG state, never the other's ...
    assert {"model/__0_0.distcp", "optimizer/__0_0.distcp", "rng_state_rank0.pt"} <= files0
    assert {"model/__1_0.distcp", "optimizer/__1_0.distcp", "rng_state_rank1.pt"} <= files1
    assert not any(name.startswith("__1_") or name == "rng_state_rank1.pt" for name in
                   (n.split("/")[-1] for n in files0))  # fmt: skip
    assert not any(name.startswith("__0_") or name == "rng_state_rank0.pt" for name in
                   (n.split("/")[-1] for n in files1))  # fmt: skip
    # ... and both have the shared files (metadata, scheduler, trainer state, hf/) and the manifest
    shared = {"model/.metadata", "optimizer/.metadata", "scheduler.pt", "trainer_state.json",
              "data_state.pt", "manifest.json"}  # fmt: skip
    assert shared <= files0 and shared <= files1
    assert files0 | files1 == set(manifest["files"]) | {"manifest.json"}

    outputs = finish(two_nodes(tmp_path, {**FSDP, "resume_from_checkpoint": True}, "out"))
    assert "is local to each node" in outputs[0]
    resumed = records_after(tmp_path / "node0" / "out.jsonl", 8, KEYS)
    assert [r["step"] for r in resumed][:4] == [9, 10, 11, 12]
    assert resumed == records_after(tmp_path / "straight.jsonl", 8, KEYS)
    # the resume gave each node the files it lacked: both copies now pass a full check alone
    for ckpt in (ckpt0, ckpt1):
        check_files(ckpt, read_manifest(ckpt))


def test_save_on_each_node_lets_one_node_resume_alone(tmp_path):
    finish(two_nodes(tmp_path, {**DDP, "save_on_each_node": True}, "out"))
    node1 = tmp_path / "node1" / "out"
    ckpt = node1 / "checkpoints" / "checkpoint-8"
    check_files(ckpt, read_manifest(ckpt))  # every file of the checkpoint is on node 1

    # node 0 is gone and node 1's disk is as it was after step 8: node 1 resumes alone ("auto":
    # the latest checkpoint), in one process with the run's own settings; keep_global_batch
    # doubles the accumulation, so the global batch stays 8
    shutil.rmtree(node1 / "checkpoints" / "checkpoint-12")
    output = run(
        {**DDP, "output_dir": str(node1), "resume_from_checkpoint": "auto"},
        tmp_path / "alone.jsonl",
        env={"FORGATHER_KEEP_GLOBAL_BATCH": "1"},
    )
    assert "resharding checkpoint 8 from ddp on 2 process(es) to ddp on 1" in output
    assert "keeping the global batch of 8 samples on 1 data-parallel rank(s): " in output
    assert "gradient_accumulation_steps 2 -> 4" in output
    assert_resumed_losses(tmp_path / "node0" / "out.jsonl", tmp_path / "alone.jsonl")
