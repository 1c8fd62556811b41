"""fgl fetch/push without engines: choosing the checkpoint, finding the output dir in a run's logs,
merging streamed tars from several nodes, and checking the result against the manifest. The engine
round trips (helper containers, get_archive/put_archive) run in tests/docker/test_fgl_lan.py."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from fgl.errors import FglError
from fgl.transfer import (
    _checkpoint_archive,
    _extract_missing,
    check_local_checkpoint,
    choose_checkpoint,
    output_dir_from_logs,
    verify_against_manifest,
)


def test_latest_is_the_newest_checkpoint_every_node_has():
    views = [["checkpoint-2", "checkpoint-10", "checkpoint-12"], ["checkpoint-2", "checkpoint-10"]]
    assert choose_checkpoint(views, "latest") == "checkpoint-10"  # 12 is on one node only
    assert choose_checkpoint([["checkpoint-4"], []], "latest") == "checkpoint-4"  # else any node
    assert choose_checkpoint(views, "12") == "checkpoint-12"
    assert choose_checkpoint(views, "checkpoint-2") == "checkpoint-2"


@pytest.mark.parametrize(
    ("views", "wanted", "message"),
    [
        ([[], []], "latest", "no node has a complete checkpoint"),
        ([["checkpoint-2"]], "checkpoint-3", "no node has a complete checkpoint-3"),
        ([["checkpoint-2"]], "best", "--checkpoint takes latest, checkpoint-N or N"),
    ],
)
def test_a_checkpoint_no_node_has_is_one_clear_error(views, wanted, message):
    with pytest.raises(FglError, match=message):
        choose_checkpoint(views, wanted)


def test_the_output_dir_comes_from_the_trainers_summary_in_the_logs(tmp_path):
    log = tmp_path / "node-0.log"
    log.write_text(
        "training summary:\n  model             LlamaForCausalLM\n"
        "  output dir        /data/work/out/tiny\nstep 1/4 | loss 10.3\n"
    )
    assert output_dir_from_logs([log], "/data/work") == "/data/work/out/tiny"
    log.write_text("  output dir  out/tiny\n")  # relative: against the run's working dir
    assert output_dir_from_logs([log], "/data/work") == "/data/work/out/tiny"
    log.write_text("no summary here\n")
    assert output_dir_from_logs([log], "/data/work") is None


def tar_of(files: dict[str, bytes], top: str = "checkpoint-4") -> list[bytes]:
    """What get_archive streams: a tar whose top directory is the checkpoint, in small chunks."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    return [data[i : i + 1000] for i in range(0, len(data), 1000)]


def manifest_for(files: dict[str, bytes]) -> bytes:
    entries = {
        name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for name, data in files.items()
    }
    return json.dumps(
        {"format": "forgather-checkpoint/2", "complete": True, "files": entries}
    ).encode()


def test_two_nodes_shards_merge_into_one_verified_checkpoint(tmp_path):
    shared = {"model/.metadata": b"meta", "scheduler.pt": b"sched"}
    node0 = {**shared, "model/__0_0.distcp": b"a" * 5000, "rng_state_rank0.pt": b"r0"}
    node1 = {**shared, "model/__1_0.distcp": b"b" * 7000, "rng_state_rank1.pt": b"r1"}
    manifest = manifest_for({**node0, **node1})
    into = tmp_path / "ckpt"
    first = _extract_missing(iter(tar_of({**node0, "manifest.json": manifest})), into)
    assert first == (5, 4 + 5 + 5000 + 2 + len(manifest))
    files, size = _extract_missing(iter(tar_of({**node1, "manifest.json": manifest})), into)
    assert (files, size) == (2, 7000 + 2)  # the shared files and manifest were there already
    verify_against_manifest(into)


def test_a_shard_no_node_sent_or_a_changed_file_fails_the_check(tmp_path):
    files = {"model/__0_0.distcp": b"a" * 10, "model/__1_0.distcp": b"b" * 10}
    into = tmp_path / "ckpt"
    _extract_missing(
        iter(
            tar_of(
                {
                    "model/__0_0.distcp": files["model/__0_0.distcp"],
                    "manifest.json": manifest_for(files),
                }
            )
        ),  # fmt: skip
        into,
    )
    with pytest.raises(FglError, match=r"model/__1_0.distcp of ckpt is on no node"):
        verify_against_manifest(into)
    (into / "model" / "__1_0.distcp").write_bytes(b"c" * 10)
    with pytest.raises(FglError, match="sha256 differs"):
        verify_against_manifest(into)


def test_tar_members_that_climb_out_are_not_written(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("checkpoint-4/../../evil", "/abs/evil", "checkpoint-4/ok"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
    into = tmp_path / "a" / "b"
    files, _ = _extract_missing(iter([buffer.getvalue()]), into)
    assert files == 1 and (into / "ok").read_bytes() == b"hi"
    assert not (tmp_path / "evil").exists() and not Path("/abs/evil").exists()


def test_push_refuses_a_directory_that_is_not_a_complete_checkpoint(tmp_path):
    with pytest.raises(FglError, match="named checkpoint-<step>"):
        check_local_checkpoint(tmp_path)
    ckpt = tmp_path / "checkpoint-4"
    ckpt.mkdir()
    with pytest.raises(FglError, match="no manifest.json"):
        check_local_checkpoint(ckpt)
    (ckpt / "manifest.json").write_bytes(manifest_for({"scheduler.pt": b"s"}))
    with pytest.raises(FglError, match="scheduler.pt of checkpoint-4 is on no node"):
        check_local_checkpoint(ckpt)
    (ckpt / "scheduler.pt").write_bytes(b"s")
    assert check_local_checkpoint(ckpt)["complete"] is True


def test_the_push_archive_holds_every_file_with_the_manifest_last(tmp_path):
    ckpt = tmp_path / "checkpoint-4"
    (ckpt / "hf" / "sub").mkdir(parents=True)
    (ckpt / "hf" / "sub" / "x.json").write_text("{}")
    (ckpt / "manifest.json").write_text("{}")
    (ckpt / "a.pt").write_bytes(b"a")
    with _checkpoint_archive(ckpt, ".fgl-push-x") as spool, tarfile.open(fileobj=spool) as tar:
        names = tar.getnames()
    assert names[-1] == ".fgl-push-x/manifest.json"
    assert {".fgl-push-x", ".fgl-push-x/hf", ".fgl-push-x/hf/sub"} <= set(names)
    assert {".fgl-push-x/a.pt", ".fgl-push-x/hf/sub/x.json"} <= set(names)
