"""CLI behaviour that needs no engine: run records, logs from the run dir, one-line errors."""

from __future__ import annotations

import pytest
from fgl.inventory import parse_node
from fgl.runs import RunDir, spec_record

pytestmark = pytest.mark.unit

RUN = "fgl-20260101-000000-abcd"


@pytest.fixture
def recorded(runs_dir):
    run = RunDir(RUN, runs_dir).create()
    run.write_record(
        {
            "run_id": RUN,
            "kind": "up",
            "created": "2026-01-01T00:00:00+00:00",
            "image": "forgather:runtime",
            "command": ["python", "-c", "print(1)"],
            "nodes": [{"rank": 0, "spec": spec_record(parse_node("localhost"))}],
        }
    )
    (run.path / "node-0.log").write_text("[node-0] a\n")
    (run.path / "node-1.log").write_text("[node-1] b\n")
    run.write_result(3, "node-1 (gpu1) exited 3", 1)
    return run


def test_status_lists_recorded_runs(recorded, fgl):
    result = fgl("status")
    assert result.exit_code == 0, result.output
    assert RUN in result.output and "exited 3" in result.output


def test_status_without_runs_says_where_it_looked(fgl, runs_dir):
    result = fgl("status")
    assert result.exit_code == 0 and str(runs_dir) in result.output


def test_logs_prints_the_copies_in_rank_order(recorded, fgl):
    assert fgl("logs", RUN).output == "[node-0] a\n[node-1] b\n"
    assert fgl("logs", RUN, "--node", "1").output == "[node-1] b\n"


def test_logs_of_an_unknown_run_is_one_line(fgl):
    result = fgl("logs", "fgl-20990101-000000-0000")
    assert result.exit_code == 2
    assert result.output.startswith("error: no logs of fgl-20990101-000000-0000")


def test_down_without_record_or_nodes_says_to_pass_nodes(fgl, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = fgl("down", "fgl-20990101-000000-0000")
    assert result.exit_code == 2 and "pass --nodes" in result.output


def test_up_without_image_is_one_line(fgl, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = fgl("up", "--nodes", "localhost", "--", "true")
    assert result.exit_code == 2
    assert (
        result.output.strip()
        == "error: no image: pass --image NAME:TAG or set 'image:' in fgl.yaml"
    )


def test_bad_rdzv_mode_is_one_line(fgl):
    result = fgl("up", "--nodes", "localhost", "--rdzv", "etcd", "--image", "x", "--", "true")
    assert result.exit_code == 2 and "--rdzv must be c10d or static" in result.output


def test_bad_env_flag_names_the_flag(fgl, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = fgl("run", "--image", "x", "-e", "1X=2", "--", "true")
    assert result.exit_code == 2 and result.output.startswith("error: --env: bad environment entry")
