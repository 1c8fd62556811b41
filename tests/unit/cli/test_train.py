"""`forgather train`: in-process runs, torchrun command lines, arguments after `--`."""

from __future__ import annotations

import sys
import textwrap

import pytest

from forgather.cli import main as cli_main
from forgather.cli import train as train_cli

pytestmark = pytest.mark.unit

RECORDER = """\
import json, os


class Recorder:
    def __init__(self, path, steps):
        self.path, self.steps = path, steps

    def run(self):
        with open(self.path, "w") as out:
            json.dump({"steps": self.steps, "rank": os.environ.get("LOCAL_RANK")}, out)
"""

CONFIG = """\
-- extends "config_type.yaml"
-- block dynamic_args
    max_steps:
        names: "--max-steps"
        type: "int"
-- endblock dynamic_args
-- block main_body
main: !singleton:{module}:Recorder
    path: {out}
    steps: {{{{ max_steps | default(3) }}}}
-- endblock main_body
"""


@pytest.fixture
def project(tmp_path):
    (tmp_path / "templates" / "configs").mkdir(parents=True)
    (tmp_path / "meta.yaml").write_text('-- extends "meta_defaults.yaml"\n')
    module = tmp_path / "recorder.py"
    module.write_text(RECORDER)
    out = tmp_path / "result.json"
    config = CONFIG.format(module=module, out=out)
    (tmp_path / "templates" / "configs" / "run.yaml").write_text(textwrap.dedent(config))
    return tmp_path, out


def run_main(argv, monkeypatch):
    monkeypatch.setattr(train_cli, "TORCHRUN_ARGS", [])
    with pytest.raises(SystemExit) as exited:
        cli_main.main(argv)
    return exited.value.code


def test_single_process_train_runs_main_in_this_process(project, monkeypatch):
    directory, out = project
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert run_main(["-p", str(directory), "train", "--max-steps", "7"], monkeypatch) in (0, None)
    assert out.read_text() == '{"steps": 7, "rank": null}'


def test_train_under_torchrun_never_starts_another_torchrun(project, monkeypatch):
    directory, out = project
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert run_main(
        ["-p", str(directory), "train", "--nproc", "4", "main.steps=5"], monkeypatch
    ) in (0, None)
    assert out.read_text() == '{"steps": 5, "rank": "0"}'


def test_nproc_builds_a_standalone_torchrun_command(project, monkeypatch, capsys):
    directory, _ = project
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    run_main(
        [
            "-p",
            str(directory),
            "-t",
            "run.yaml",
            "train",
            "--nproc",
            "2",
            "--dry-run",
            "main.steps=5",
        ],
        monkeypatch,
    )
    line = capsys.readouterr().out.strip()
    assert line.startswith(
        f"{sys.executable} -m torch.distributed.run --standalone --nproc-per-node=2 -m forgather.cli.main"
    )
    assert line.endswith(f"-p {directory} -t run.yaml train main.steps=5")


def test_arguments_after_double_dash_go_to_torchrun(project, monkeypatch, capsys):
    directory, _ = project
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    argv = [
        "-p",
        str(directory),
        "train",
        "--dry-run",
        "--max-steps",
        "9",
        "--",
        "--nnodes",
        "2",
        "--node-rank",
        "1",
    ]
    with pytest.raises(SystemExit):
        cli_main.main(argv)
    line = capsys.readouterr().out.strip()
    assert (
        "-m torch.distributed.run --nnodes 2 --node-rank 1 --nproc-per-node=1 -m forgather.cli.main"
        in line
    )
    assert "--standalone" not in line
    assert line.endswith("train --max-steps 9")
    train_cli.TORCHRUN_ARGS.clear()


def test_main_target_without_run_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "templates" / "configs").mkdir(parents=True)
    (tmp_path / "meta.yaml").write_text('-- extends "meta_defaults.yaml"\n')
    (tmp_path / "templates" / "configs" / "a.yaml").write_text("main: !dict {a: 1}\n")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert run_main(["-p", str(tmp_path), "train"], monkeypatch) == 1
    err = capsys.readouterr().err
    assert "no run() method" in err and "Traceback" not in err


def test_resume_becomes_an_override_that_reaches_torchrun_workers(project, monkeypatch, capsys):
    directory, _ = project
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    run_main(
        ["-p", str(directory), "train", "--nproc", "2", "--resume", "latest", "--dry-run"],
        monkeypatch,
    )
    assert (
        capsys.readouterr().out.strip().endswith("train trainer_args.resume_from_checkpoint=latest")
    )


def test_resume_reaches_an_in_process_run(project, monkeypatch):
    directory, out = project
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    (directory / "templates" / "configs" / "resume.yaml").write_text(
        "trainer_args: &args !dict {resume_from_checkpoint: null}\n"
        f"main: !singleton:{directory / 'recorder.py'}:Recorder\n"
        f"    path: {out}\n"
        "    steps: !call:getitem [*args, resume_from_checkpoint]\n"
    )
    argv = ["-p", str(directory), "-t", "resume.yaml", "train", "--resume", "/some/checkpoint-4"]
    assert run_main(argv, monkeypatch) in (0, None)
    assert out.read_text() == '{"steps": "/some/checkpoint-4", "rank": null}'


def test_help_lists_the_flags_the_config_declares(project, monkeypatch, capsys):
    directory, _ = project
    monkeypatch.setenv("COLUMNS", "200")
    assert run_main(["-p", str(directory), "train", "--help"], monkeypatch) in (0, None)
    out = capsys.readouterr().out
    assert "Flags declared by run.yaml" in out and "--max-steps (int)" in out


def test_a_filesystem_error_in_the_run_is_one_line_naming_the_path(project, monkeypatch, capsys):
    """An output path under a regular file (or any OSError the run meets) is one line with the
    path and the cause, exit status 1, no traceback."""
    directory, _ = project
    blocker = directory / "a-file"
    blocker.write_text("")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    argv = ["-p", str(directory), "train", f"main.path={blocker}/out.json"]
    assert run_main(argv, monkeypatch) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: {blocker}/out.json: Not a directory"], err
