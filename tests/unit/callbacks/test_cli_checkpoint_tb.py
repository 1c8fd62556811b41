"""`forgather checkpoint list|inspect` on hand-made checkpoint dirs, and `forgather tb --dry-run`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forgather.cli.main import app

pytestmark = pytest.mark.unit


@pytest.fixture
def cli():
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def make_checkpoint(
    root: Path,
    step: int,
    *,
    manifest: bool = True,
    complete: bool = True,
    metrics: dict | None = None,
    name: str | None = None,
    best: str | None = None,
) -> Path:
    path = root / (name or f"checkpoint-{step}")
    path.mkdir(parents=True)
    files = {
        "model.safetensors": b"weights" * 100 + bytes([step % 256]),
        "optimizer.pt": b"optimizer state",
        "trainer_state.json": json.dumps(
            {"global_step": step, "best_model_checkpoint": best}
        ).encode(),
        "rng_state_rank0.pt": b"rng",
    }
    for file, data in files.items():
        (path / file).write_bytes(data)
    if manifest:
        (path / "manifest.json").write_text(
            json.dumps(
                {
                    "format": "forgather-checkpoint/1",
                    "complete": complete,
                    "step": step,
                    "epoch": step / 1000,
                    "world_size": 1,
                    "created": "2026-11-26T10:00:00+00:00",
                    "config_digest": None,
                    "model_digest": "abc",
                    "model_class": "ForgatherForCausalLM",
                    "versions": {"forgather": "0.1.0", "torch": "2.13"},
                    "git_sha": None,
                    "image_digest": None,
                    "metrics": metrics or {},
                    "files": {
                        f: {"bytes": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                        for f, d in files.items()
                    },
                }
            )
        )
    return path


@pytest.fixture
def output_dir(tmp_path) -> Path:
    out = tmp_path / "out"
    root = out / "checkpoints"
    make_checkpoint(root, 100, metrics={"eval_loss": 2.5})
    make_checkpoint(root, 200, metrics={"eval_loss": 2.0})
    make_checkpoint(root, 300, metrics={"eval_loss": 2.2})
    make_checkpoint(root, 400, manifest=False)
    make_checkpoint(root, 500, complete=False)
    make_checkpoint(root, 600, name=".tmp-checkpoint-600-1234")
    return out


def rows(stdout: str) -> dict[str, str]:
    found = {}
    for line in stdout.splitlines():
        for word in line.split():
            if word.startswith(("checkpoint-", ".tmp-checkpoint-")):
                found[word] = line
    return found


def test_checkpoint_list_shows_steps_completeness_metrics_size_and_best(cli, output_dir):
    result = cli("checkpoint", "list", output_dir)
    assert result.exit_code == 0, result.output
    table = rows(result.stdout)
    assert list(table) == [
        "checkpoint-100",
        "checkpoint-200",
        "checkpoint-300",
        "checkpoint-400",
        "checkpoint-500",
        ".tmp-checkpoint-600-1234",
    ]
    for name in ("checkpoint-100", "checkpoint-200", "checkpoint-300"):
        assert " yes " in table[name]
        assert "2026-11-26 10:00:00" in table[name]
        assert " B" in table[name] or "KiB" in table[name]
    assert "eval_loss=2.5" in table["checkpoint-100"]
    assert "NO (no manifest.json)" in table["checkpoint-400"]
    assert "NO (complete is not true)" in table["checkpoint-500"]
    assert "NO (temporary directory" in table[".tmp-checkpoint-600-1234"]
    best = [name for name, line in table.items() if line.lstrip().startswith("*")]
    assert best == ["checkpoint-200"]  # lowest eval_loss in the manifests


def test_checkpoint_list_prefers_the_best_checkpoint_recorded_by_the_trainer(cli, tmp_path):
    root = tmp_path / "out" / "checkpoints"
    make_checkpoint(root, 10, metrics={"eval_loss": 1.0})
    make_checkpoint(root, 20, metrics={"eval_loss": 3.0}, best=str(root / "checkpoint-20"))
    result = cli("checkpoint", "list", root)  # the checkpoints dir itself works too
    assert result.exit_code == 0, result.output
    best = [n for n, line in rows(result.stdout).items() if line.lstrip().startswith("*")]
    assert best == ["checkpoint-20"]


def test_checkpoint_list_of_an_empty_dir(cli, tmp_path):
    result = cli("checkpoint", "list", tmp_path)
    assert result.exit_code == 0
    assert result.stdout.startswith("no checkpoints in")


META = """\
-- extends "meta_defaults.yaml"
-- block configs
name: Demo
config_prefix: configs
default_config: a.yaml
-- endblock configs
"""

CONFIG = """\
-- extends "config_type.yaml"
-- block meta_output
    output_dir: output_models/run1
    models_dir: output_models
{logging}
-- endblock meta_output
-- block main_body
main: !singleton:named_dict
    a: 1
-- endblock main_body
"""


def make_project(root: Path, logging_dir: str | None = None) -> Path:
    (root / "templates" / "configs").mkdir(parents=True)
    (root / "meta.yaml").write_text(META)
    logging = f"    logging_dir: {logging_dir}" if logging_dir else ""
    (root / "templates" / "configs" / "a.yaml").write_text(CONFIG.format(logging=logging))
    return root


def test_checkpoint_list_defaults_to_the_projects_meta_output_dir(cli, tmp_path):
    project = make_project(tmp_path / "proj")
    make_checkpoint(project / "output_models" / "run1" / "checkpoints", 7)
    for args in (("-p", project, "checkpoint", "list"), ("checkpoint", "list", project)):
        result = cli(*args)
        assert result.exit_code == 0, result.output
        assert list(rows(result.stdout)) == ["checkpoint-7"]


def test_checkpoint_list_defaults_to_output_outside_a_project(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_checkpoint(tmp_path / "output" / "checkpoints", 3)
    result = cli("checkpoint", "list")
    assert result.exit_code == 0, result.output
    assert list(rows(result.stdout)) == ["checkpoint-3"]


def test_checkpoint_inspect_prints_the_manifest_and_verifies_files(cli, output_dir):
    path = output_dir / "checkpoints" / "checkpoint-200"
    result = cli("checkpoint", "inspect", path)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "format: forgather-checkpoint/1" in out
    assert "eval_loss: 2.0" in out and "model_class: ForgatherForCausalLM" in out
    for file in ("model.safetensors", "optimizer.pt", "trainer_state.json", "rng_state_rank0.pt"):
        line = next(line for line in out.splitlines() if line.strip().startswith(file))
        assert line.rstrip().endswith("ok")
    assert out.rstrip().endswith("complete, all files verified")


def test_checkpoint_inspect_reports_corrupt_missing_and_unlisted_files(cli, output_dir):
    path = output_dir / "checkpoints" / "checkpoint-100"
    data = bytearray((path / "model.safetensors").read_bytes())
    data[0] ^= 1  # same size, different content
    (path / "model.safetensors").write_bytes(bytes(data))
    (path / "optimizer.pt").unlink()
    (path / "stray.bin").write_bytes(b"x")
    result = cli("checkpoint", "inspect", path / "manifest.json")
    assert result.exit_code == 1
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert lines["model.safetensors"].rstrip().endswith("sha256 mismatch")
    assert lines["optimizer.pt"].rstrip().endswith("missing")
    assert lines["stray.bin"].rstrip().endswith("unlisted")
    assert "do not match the manifest: model.safetensors, optimizer.pt" in result.stderr
    no_verify = cli("checkpoint", "inspect", "--no-verify", path)
    assert "not verified" in no_verify.stdout


@pytest.mark.parametrize("step", [400, 500])
def test_checkpoint_inspect_of_an_incomplete_checkpoint_fails(cli, output_dir, step):
    result = cli("checkpoint", "inspect", output_dir / "checkpoints" / f"checkpoint-{step}")
    assert result.exit_code == 1
    assert "incomplete checkpoint" in result.stderr
    assert "model.safetensors" in result.stdout


# ---- tb ----


def test_tb_dry_run_prints_the_command_for_the_configs_logging_dir(cli, tmp_path):
    project = make_project(tmp_path / "proj", logging_dir="output_models/run1/runs/r1")
    result = cli("-p", project, "tb", "--dry-run", "--", "--port", "6007")
    assert result.exit_code == 0, result.output
    words = result.stdout.split()
    assert words[0].endswith("tensorboard") or words[1:3] == ["-m", "tensorboard.main"]
    expected = str((project / "output_models" / "run1" / "runs" / "r1").resolve())
    assert words[-4:] == ["--logdir", expected, "--port", "6007"]


def test_tb_dry_run_uses_output_dir_or_all_runs(cli, tmp_path):
    project = make_project(tmp_path / "proj")
    result = cli("-p", project, "tb", "--dry-run")
    assert result.stdout.split()[-2:] == [
        "--logdir",
        str((project / "output_models" / "run1").resolve()),
    ]
    result = cli("-p", project, "tb", "--all", "--dry-run")
    assert result.stdout.split()[-2:] == ["--logdir", str((project / "output_models").resolve())]
    result = cli("-p", project, "tb", "--dry-run", "--logdir", "elsewhere")
    assert result.stdout.split()[-2:] == ["--logdir", "elsewhere"]


def test_tb_without_project_or_logdir_is_an_error(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("tb", "--dry-run")
    assert result.exit_code == 1
    assert "use --logdir" in result.stderr
