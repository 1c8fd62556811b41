"""One owner per concept in fgl: the shared node options, the Run object, model shipping."""

from __future__ import annotations

import json

import pytest
import typer
from fgl.errors import FglError
from fgl.inventory import parse_node
from fgl.models import model_source
from fgl.node_options import Targets
from fgl.run import Run
from fgl.runs import RunDir, spec_record

pytestmark = pytest.mark.unit

NODE_COMMANDS = ("nodes", "up", "down", "ps", "status", "logs", "sync-image", "pull", "doctor")
ONE_NODE_COMMANDS = ("run", "serve")


def options_of(name: str) -> dict:
    from fgl.cli import app

    command = typer.main.get_command(app).commands[name]
    return {opt: p for p in command.params for opt in p.opts if opt.startswith("-")}


@pytest.mark.parametrize("name", NODE_COMMANDS + ONE_NODE_COMMANDS)
def test_every_command_that_reaches_nodes_has_the_same_node_options(name):
    options = options_of(name)
    node_flag = "--node" if name in ONE_NODE_COMMANDS else "--nodes"
    for flag in (node_flag, "--inventory", "--ssh-key", "--ssh-config"):
        assert flag in options, (name, flag)
    reference = options_of("up")
    for flag in ("--inventory", "--ssh-key", "--ssh-config"):
        assert options[flag].help == reference[flag].help


def record_run(runs_dir, run_id: str, node: str, kind: str = "serve") -> None:
    run = RunDir(run_id, runs_dir).create()
    run.write_record(
        {
            "run_id": run_id,
            "kind": kind,
            "nodes": [{"rank": 0, "spec": spec_record(parse_node(node))}],
        }
    )


def test_a_run_is_found_on_the_given_nodes_then_its_record_then_the_inventory(
    runs_dir, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fgl.yaml").write_text("nodes: [inv1, inv2]\n")
    record_run(runs_dir, "fgl-a", "recorded-host")
    given = Run.find("fgl-a", Targets(nodes="given-host", ssh_config="/nonexistent"))
    assert [n.name for n in given.nodes] == ["given-host"] and given.kind == "serve"
    recorded = Run.find("fgl-a", Targets(ssh_config="/nonexistent"))
    assert [n.name for n in recorded.nodes] == ["recorded-host"]
    unrecorded = Run.find("fgl-b", Targets(ssh_config="/nonexistent"))
    assert [n.name for n in unrecorded.nodes] == ["inv1", "inv2"]


def test_a_run_records_who_started_what_where(runs_dir):
    run = Run.new("serve", [parse_node("localhost")])
    run.record(
        image="forgather:runtime", url="http://127.0.0.1:8000", nodes=[{"address": "127.0.0.1"}]
    )
    record = json.loads((runs_dir / run.id / "run.json").read_text())
    assert record["kind"] == "serve" and record["url"] == "http://127.0.0.1:8000"
    assert record["nodes"] == [
        {"rank": 0, "spec": spec_record(parse_node("localhost")), "address": "127.0.0.1"}
    ]
    assert {"fgl_version", "created", "launcher", "fgl_pid"} <= set(record)


def make_model(root):
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "llama"}')
    (root / "model.safetensors").write_bytes(b"weights")
    (root / "tokenizer.json").write_text("{}")
    checkpoint = root / "checkpoints" / "checkpoint-20"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"checkpoint weights")
    (checkpoint / "manifest.json").write_text("{}")
    (checkpoint / "optimizer.pt").write_bytes(b"big optimizer state")
    (root / "runs" / "1").mkdir(parents=True)
    (root / "runs" / "1" / "trainer_logs.jsonl").write_text("{}\n")
    return root


def test_a_model_ships_without_its_checkpoints_and_logs(tmp_path):
    source = model_source(make_model(tmp_path / "tiny"))
    assert [name for _, name in source.files] == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert source.path_in("/models/model") == "/models/model" and source.name == "tiny"


def test_a_checkpoint_ships_with_its_weights_only(tmp_path):
    root = make_model(tmp_path / "tiny")
    source = model_source(root / "checkpoints" / "checkpoint-20")
    names = [name for _, name in source.files]
    assert names[-2:] == [
        "checkpoints/checkpoint-20/manifest.json",
        "checkpoints/checkpoint-20/model.safetensors",
    ]
    assert "checkpoints/checkpoint-20/optimizer.pt" not in names
    assert source.path_in("/m") == "/m/checkpoints/checkpoint-20" and source.name == "tiny"


def test_a_sharded_checkpoint_ships_its_shards_and_config_but_no_optimizer(tmp_path):
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-8"
    for name in ("model/.metadata", "model/__0_0.distcp", "model/__1_0.distcp",
                 "optimizer/.metadata", "optimizer/__0_0.distcp", "hf/config.json",
                 "manifest.json", "scheduler.pt"):  # fmt: skip
        (checkpoint / name).parent.mkdir(parents=True, exist_ok=True)
        (checkpoint / name).write_bytes(name.encode())
    source = model_source(checkpoint)
    assert [name for _, name in source.files] == [
        f"checkpoints/checkpoint-8/{name}"
        for name in (
            "manifest.json",
            "model/.metadata",
            "model/__0_0.distcp",
            "model/__1_0.distcp",
            "hf/config.json",
        )  # fmt: skip
    ]
    # Only its own run's directory counts: a config.json higher up is never used.
    (tmp_path / "config.json").write_text("{}")
    (checkpoint / "hf" / "config.json").unlink()
    with pytest.raises(FglError, match="has no hf/config.json and its run no config.json"):
        model_source(checkpoint)


def test_the_digest_follows_the_content(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    root = make_model(tmp_path / "tiny")
    first = model_source(root).digest
    assert model_source(root).digest == first  # again, from the hash cache
    (root / "runs" / "1" / "trainer_logs.jsonl").write_text("more\n")
    assert model_source(root).digest == first  # logs do not ship
    (root / "model.safetensors").write_bytes(b"retrained")
    changed = model_source(root)
    assert changed.digest != first and changed.volume == f"fgl-model-{changed.digest[:16]}"


def test_a_directory_that_is_no_model_is_one_error(tmp_path):
    with pytest.raises(FglError, match="neither a model"):
        model_source(tmp_path)
    with pytest.raises(FglError, match="not a directory"):
        model_source(tmp_path / "missing")
