"""Exit-code aggregation, teardown on the first failure, and the run directory.

The supervisor is driven here with small in-memory containers; tests/docker/test_fgl_local.py runs the
same paths against the real engine.
"""

from __future__ import annotations

import io
import os
import threading
import time

import pytest
from fgl.engine import stop_and_remove
from fgl.inventory import parse_node
from fgl.logs import LogSink
from fgl.runs import EXIT_LOST, Member, RunDir, Supervisor, aggregate_exit, list_runs, spec_record

pytestmark = pytest.mark.unit


class Box:
    """An in-memory container: prints its lines, exits with ``code`` after ``after`` s, or when stopped."""

    def __init__(self, name, lines=(), code=0, after=None):
        self.name = name
        self.lines = lines
        self.code = code
        self.after = after
        self.done = threading.Event()
        self.stopped = self.removed = False
        if after is not None:
            threading.Timer(after, self.done.set).start()

    def logs(self, stream=True, follow=True):
        for line in self.lines:
            yield (line + "\n").encode()
        self.done.wait()

    def wait(self):
        self.done.wait()
        return {"StatusCode": self.code}

    def stop(self, timeout=10):
        if not self.done.is_set():
            self.code = 143
            self.stopped = True
            self.done.set()

    def remove(self, force=False):
        self.removed = True


class Unreachable(Box):
    def wait(self):
        time.sleep(0.05)
        raise ConnectionError("ssh channel closed")


def supervise(boxes, tmp_path):
    out = io.StringIO()
    sink = LogSink(tmp_path, stream=out, colour=False)
    members = [Member(rank=i, node=f"n{i}", container=b) for i, b in enumerate(boxes)]
    sup = Supervisor(members, sink, lambda m, grace: stop_and_remove(m.container, grace), grace=1)
    t0 = time.monotonic()
    code, failed = sup.supervise()
    sink.close()
    return code, failed, sup, out.getvalue(), time.monotonic() - t0


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([], (0, None)),
        ([(0, 0), (1, 0)], (0, None)),
        ([(1, 3), (0, 143)], (3, 1)),
        ([(0, 0), (2, 1), (1, 2)], (1, 2)),
    ],
)
def test_exit_code_is_the_first_failure(events, expected):
    assert aggregate_exit(events) == expected


def test_all_zero_exits_zero_and_removes_everything(tmp_path):
    boxes = [Box("a", ["hi"], 0, after=0.05), Box("b", ["yo"], 0, after=0.1)]
    code, failed, _, out, _ = supervise(boxes, tmp_path)
    assert (code, failed) == (0, None)
    assert all(b.removed and not b.stopped for b in boxes)
    assert sorted(out.splitlines()) == ["[node-0] hi", "[node-1] yo"]


def test_first_failure_stops_the_others_and_gives_its_code(tmp_path):
    boxes = [Box("a", ["training"], 0), Box("b", ["boom"], 3, after=0.1), Box("c", [], 0)]
    code, failed, sup, _, took = supervise(boxes, tmp_path)
    assert (code, failed) == (3, 1)
    assert boxes[0].stopped and boxes[2].stopped and not boxes[1].stopped
    assert all(b.removed for b in boxes)
    assert "node-1 (n1) exited 3" in sup.reason
    assert took < 5
    assert (tmp_path / "node-1.log").read_text() == "[node-1] boom\n"


def test_lost_node_fails_the_run(tmp_path):
    boxes = [Box("a", [], 0), Unreachable("b")]
    code, failed, sup, _, _ = supervise(boxes, tmp_path)
    assert (code, failed) == (EXIT_LOST, 1)
    assert "lost contact with node-1" in sup.reason
    assert boxes[0].stopped and boxes[0].removed


def test_run_dir_round_trip(tmp_path):
    run = RunDir("fgl-20260101-000000-abcd", tmp_path).create()
    spec = parse_node("alice@gpu1:2222")
    run.write_record({"run_id": run.run_id, "nodes": [{"rank": 0, "spec": spec_record(spec)}]})
    assert run.exists() and run.result() is None
    run.write_result(3, "node-0 exited 3", 0)
    assert run.result()["exit_code"] == 3
    assert run.node_specs() == [spec]
    RunDir("fgl-20260102-000000-abcd", tmp_path).create().write_record({"nodes": []})
    assert [r.run_id for r in list_runs(tmp_path)] == ["fgl-20260102-000000-abcd", run.run_id]


def test_run_dirs_and_their_files_are_private(tmp_path):
    import stat

    from fgl.logs import LogSink

    root = tmp_path / "runs"
    run = RunDir("fgl-20260101-000000-abcd", root).create()
    run.write_record({"nodes": []})
    run.write_result(0, "ok")
    sink = LogSink(run.path, stream=open(os.devnull, "w"), colour=False)  # noqa: SIM115
    sink.write("node-0", 0, "hello")
    sink.close()

    def mode(path):
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(root) == mode(run.path) == 0o700  # fgl down acts on what run.json says
    for name in ("run.json", "result.json", "node-0.log"):
        assert mode(run.path / name) == 0o600, name


def test_unknown_run_says_how_to_find_runs(tmp_path):
    with pytest.raises(Exception, match="fgl status lists runs"):
        RunDir("fgl-nope", tmp_path).record()
