"""Log lines: split from byte chunks, prefixed per node, copied to the run dir, secrets masked."""

from __future__ import annotations

import io

import pytest
from fgl.logs import LineSplitter, LogSink

pytestmark = pytest.mark.unit


def test_lines_complete_across_chunks():
    s = LineSplitter()
    assert s.feed(b"hel") == []
    assert s.feed(b"lo\nwor") == ["hello"]
    assert s.feed(b"ld\n\nx") == ["world", ""]
    assert s.flush() == ["x"]
    assert s.flush() == []


def test_utf8_split_inside_a_character():
    data = "größe ✓\n".encode()
    s = LineSplitter()
    out = []
    for i in range(len(data)):
        out += s.feed(data[i : i + 1])
    assert out == ["größe ✓"]


def test_carriage_returns_keep_the_last_state():
    s = LineSplitter()
    assert s.feed(b"10%\r50%\r100%\r\n") == ["100%"]


def test_sink_prefixes_and_copies_per_node(tmp_path):
    out = io.StringIO()
    sink = LogSink(tmp_path, stream=out, colour=False)
    sink.pump("node-0", 0, [b"a\nb", b"\n"])
    sink.pump("node-1", 1, [b"c"])
    sink.close()
    assert out.getvalue().splitlines() == ["[node-0] a", "[node-0] b", "[node-1] c"]
    assert (tmp_path / "node-0.log").read_text() == "[node-0] a\n[node-0] b\n"
    assert (tmp_path / "node-1.log").read_text() == "[node-1] c\n"


def test_sink_masks_secret_values(tmp_path):
    out = io.StringIO()
    sink = LogSink(
        tmp_path, stream=out, colour=False, secrets={"HF_TOKEN": "hf_secret", "HOME": "/root"}
    )
    sink.write("node-0", 0, "HF_TOKEN=hf_secret HOME=/root")
    sink.close()
    assert out.getvalue() == "[node-0] HF_TOKEN=****** HOME=/root\n"
    assert "hf_secret" not in (tmp_path / "node-0.log").read_text()


def test_unprefixed_sink_prints_lines_as_they_are():
    out = io.StringIO()
    LogSink(None, stream=out, prefixed=False).pump("node-0", 0, [b"plain\n"])
    assert out.getvalue() == "plain\n"


TORCHRUN_FAILURE = """\
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
sh FAILED
------------------------------------------------------------
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-26_02:58:05
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : 3 (pid: 11)
  error_file: <N/A>
============================================================
"""


def test_torchrun_report_gives_the_failed_workers_code():
    from fgl.logs import TorchrunReport
    from fgl.runs import worker_exit_code

    report = TorchrunReport()
    for line in TORCHRUN_FAILURE.splitlines():
        report.feed(line)
    assert report.exit_code == 3
    assert worker_exit_code(1, report.exit_code) == 3
    assert worker_exit_code(137, report.exit_code) == 137  # killed container: its own code
    assert worker_exit_code(1, None) == 1


def test_torchrun_report_signal_exit_becomes_128_plus_signal():
    from fgl.logs import TorchrunReport

    report = TorchrunReport()
    for line in ["Root Cause (first observed failure):", "  exitcode  : -9 (pid: 7)"]:
        report.feed(line)
    assert report.exit_code == 137


def test_exitcode_lines_outside_a_report_are_ignored():
    from fgl.logs import TorchrunReport

    report = TorchrunReport()
    report.feed("  exitcode  : 4 (pid: 1)")
    assert report.exit_code is None
