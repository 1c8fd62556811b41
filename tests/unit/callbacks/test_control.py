"""Trainer control: HTTP endpoint, discovery files, the callback's flags and the CLI."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from typer.testing import CliRunner

from forgather.cli.main import app
from forgather.ml.train.callbacks.control import TrainerControlCallback
from forgather.ml.train.control import (
    ControlClient,
    ControlError,
    JobInfo,
    find_job,
    list_jobs,
    write_job_file,
)
from forgather.ml.train.state import TrainerControl

from .conftest import make_args, make_state

pytestmark = pytest.mark.unit

FLAGS = ("should_save", "should_training_stop", "should_abort_without_save")


class FakeLoop(threading.Thread):
    """Steps a TrainerState in a thread and calls on_step_end each step, like the trainer."""

    def __init__(self, tmp_path, job_id="run1-abc123", interval=0.01, max_steps=100_000):
        super().__init__(daemon=True)
        self.args = make_args(tmp_path)
        self.state = make_state(max_steps=max_steps)
        self.control = TrainerControl()
        self.callback = TrainerControlCallback(job_id=job_id, announce=False)
        self.interval = interval
        self.events: list[tuple[str, int]] = []
        self.halt = threading.Event()
        self.callback.on_train_begin(self.args, self.state, self.control)

    def run(self):
        try:
            while not self.halt.is_set() and self.state.global_step < self.state.max_steps:
                self.state.global_step += 1
                result = self.callback.on_step_end(self.args, self.state, self.control)
                self.control = result or self.control
                for flag in FLAGS:
                    if getattr(self.control, flag):
                        self.events.append((flag, self.state.global_step))
                if self.control.should_training_stop:
                    break
                self.control.reset_step_flags()
                time.sleep(self.interval)
        finally:
            self.callback.on_train_end(self.args, self.state, self.control)

    def finish(self):
        self.halt.set()
        self.join(timeout=10)

    def flag_steps(self, flag: str) -> list[int]:
        return [step for name, step in self.events if name == flag]


@pytest.fixture
def loop(tmp_path, jobs_dir):
    fake = FakeLoop(tmp_path)
    fake.start()
    yield fake
    fake.finish()


@pytest.fixture
def cli():
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


EXPECTED = {
    "save": {"should_save"},
    "stop": {"should_training_stop"},
    "save-stop": {"should_save", "should_training_stop"},
    "abort": {"should_abort_without_save", "should_training_stop"},
}


@pytest.mark.parametrize("command", list(EXPECTED))
def test_each_command_sets_its_flags_within_one_step(loop, command):
    client = ControlClient(find_job("run1"))
    before = loop.state.global_step
    reply = client.send(command)
    after = loop.state.global_step
    assert reply == {"accepted": command, "job_id": "run1-abc123"}
    assert wait_for(lambda: any(name in EXPECTED[command] for name, _ in loop.events))
    steps = {name: loop.flag_steps(name) for name in FLAGS}
    for flag in FLAGS:
        if flag in EXPECTED[command]:
            assert len(steps[flag]) == 1, steps
            assert before <= steps[flag][0] <= after + 1
        else:
            assert steps[flag] == []
    flag_steps = {steps[flag][0] for flag in EXPECTED[command]}
    assert len(flag_steps) == 1  # all of a command's flags on the same step
    if "should_training_stop" in EXPECTED[command]:
        loop.join(timeout=10)
        assert not loop.is_alive()


def test_cli_sends_commands_by_job_id_prefix(loop, cli):
    result = cli("control", "save", "run1")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "sent save to job run1-abc123"
    assert wait_for(lambda: loop.flag_steps("should_save"))
    result = cli("control", "save-stop", "run1-abc")
    assert result.exit_code == 0, result.output
    loop.join(timeout=10)
    assert len(loop.flag_steps("should_save")) == 2
    assert len(loop.flag_steps("should_training_stop")) == 1


def test_status_reports_step_loss_and_job_info_but_not_the_token(loop, cli):
    loop.callback.on_log(loop.args, loop.state, loop.control, logs={"loss": 2.5})
    status = ControlClient(find_job("run1")).status()
    assert status["job_id"] == "run1-abc123"
    assert status["pid"] == os.getpid()
    assert status["max_steps"] == 100_000
    assert status["loss"] == 2.5
    assert status["global_step"] >= 0
    assert status["output_dir"] == loop.args.output_dir
    assert "token" not in status
    result = cli("control", "status", "run1")
    assert result.exit_code == 0, result.output
    assert "global_step" in result.stdout and "run1-abc123" in result.stdout


def request(url, token=None, data=None):
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    with urllib.request.urlopen(req, timeout=5) as response:
        return response.status, json.loads(response.read())


def test_requests_without_the_right_token_get_401_and_change_nothing(loop):
    info = find_job("run1")
    body = json.dumps({"command": "abort"}).encode()
    for token in (None, "wrong", info.token + "x"):
        for data in (None, body):
            path = "/command" if data else "/status"
            with pytest.raises(urllib.error.HTTPError) as caught:
                request(info.url + path, token, data)
            assert caught.value.code == 401
    with pytest.raises(ControlError, match="HTTP 401"):
        ControlClient(JobInfo(**{**info.__dict__, "token": "bad"})).send("stop")
    with pytest.raises(urllib.error.HTTPError) as caught:
        request(info.url + "/command", info.token, json.dumps({"command": "explode"}).encode())
    assert caught.value.code == 400
    time.sleep(0.1)
    assert loop.events == [] and loop.is_alive()
    assert request(info.url + "/status", info.token)[0] == 200


def test_discovery_file_is_private_and_removed_at_train_end(tmp_path, jobs_dir):
    fake = FakeLoop(tmp_path, job_id="priv-000001")
    path = jobs_dir / "priv-000001.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert set(data) == {"job_id", "host", "port", "token", "pid", "output_dir", "started"}
    assert data["host"] == "127.0.0.1" and data["pid"] == os.getpid()
    assert [j.job_id for j in list_jobs()] == ["priv-000001"]
    fake.start()
    fake.finish()
    assert not path.exists()
    assert list_jobs() == []


def test_control_server_only_on_rank_zero(tmp_path, jobs_dir):
    callback = TrainerControlCallback(job_id="r1-000000", announce=False)
    state = make_state(is_world_process_zero=False, rank=1)
    callback.on_train_begin(make_args(tmp_path), state, TrainerControl())
    assert callback.server is None and not jobs_dir.exists()
    control = callback.on_step_end(None, state, TrainerControl())
    assert not any(getattr(control, flag) for flag in FLAGS)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_list_prunes_entries_of_dead_processes(jobs_dir, cli):
    write_job_file(JobInfo("dead-111111", "127.0.0.1", 1, "t", dead_pid(), None, "2026"))
    write_job_file(JobInfo("live-222222", "127.0.0.1", free_port(), "t", os.getpid(), "/o", "2026"))
    result = cli("control", "list")
    assert result.exit_code == 0, result.output
    assert "live-222222" in result.stdout and "unreachable" in result.stdout
    assert "dead-111111" not in result.stdout
    assert not (jobs_dir / "dead-111111.json").exists()
    assert [j.job_id for j in list_jobs()] == ["live-222222"]


def test_cli_errors_are_one_line_and_exit_1(jobs_dir, cli):
    result = cli("control", "stop", "nope")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: no job matches 'nope' (see `forgather control list`)"

    write_job_file(JobInfo("gone-333333", "127.0.0.1", 1, "t", dead_pid(), None, "2026"))
    result = cli("control", "save", "gone")
    assert result.exit_code == 1
    assert "job gone-333333 is not running" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    write_job_file(JobInfo("shut-444444", "127.0.0.1", free_port(), "t", os.getpid(), None, ""))
    result = cli("control", "status", "shut")
    assert result.exit_code == 1
    assert "connection refused" in result.stderr

    write_job_file(JobInfo("shut-555555", "127.0.0.1", free_port(), "t", os.getpid(), None, ""))
    result = cli("control", "abort", "shut")
    assert result.exit_code == 1
    assert "matches several jobs" in result.stderr

    result = cli("control", "list")
    assert result.exit_code == 0


def test_list_with_no_jobs(jobs_dir, cli):
    result = cli("control", "list")
    assert result.exit_code == 0
    assert result.stdout.startswith("no running jobs")


def test_300_idle_connections_neither_pile_up_threads_nor_lock_out_a_command(loop):
    """Connections that never send a request line: the training process keeps at most
    MAX_CONNECTIONS of them (a new one closes the oldest), and a real command still gets through
    within a second."""
    from forgather.ml.train.control import MAX_CONNECTIONS

    info = find_job("run1")
    threads_before = threading.active_count()
    idle = [socket.create_connection((info.host, info.port)) for _ in range(300)]
    try:
        started = time.monotonic()
        status, body = request(info.url + "/command", info.token, b'{"command": "save"}')
        assert status == 202 and body["accepted"] == "save"
        assert time.monotonic() - started < 1.0
        assert wait_for(lambda: loop.flag_steps("should_save"), timeout=5)
        assert threading.active_count() <= threads_before + MAX_CONNECTIONS + 2
    finally:
        for sock in idle:
            sock.close()
    assert loop.is_alive()


def test_a_silent_connection_is_dropped_after_the_request_timeout(loop, monkeypatch):
    from forgather.ml.train import control

    info = find_job("run1")
    with socket.create_connection((info.host, info.port)) as sock:
        sock.settimeout(control.REQUEST_TIMEOUT + 5)
        started = time.monotonic()
        assert sock.recv(1) == b""  # the server closed it
        assert time.monotonic() - started < control.REQUEST_TIMEOUT + 2


def test_a_jobs_dir_others_can_enter_or_own_turns_control_off_and_training_goes_on(
    tmp_path, jobs_dir, capsys
):
    jobs_dir.mkdir(mode=0o755)
    os.chmod(jobs_dir, 0o755)
    fake = FakeLoop(tmp_path, job_id="open-000001", max_steps=3)
    assert fake.callback.server is None
    assert "trainer control is off for this run: jobs directory" in capsys.readouterr().err
    assert "has mode 0755: others could read the jobs' tokens" in str(
        pytest.raises(ControlError, write_job_file, JobInfo("x", "h", 1, "t", 1, None, "s")).value
    )
    fake.start()
    fake.join(timeout=10)
    assert fake.state.global_step == 3 and not list(jobs_dir.iterdir())
    if os.getuid() == 0:  # another owner (giving it away needs root)
        os.chmod(jobs_dir, 0o700)
        os.chown(jobs_dir, 65534, 65534)
        with pytest.raises(ControlError, match="is owned by uid 65534, not by you"):
            write_job_file(JobInfo("x", "h", 1, "t", 1, None, "s"))


def test_a_port_in_use_turns_control_off_and_training_goes_on(tmp_path, jobs_dir, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        callback = TrainerControlCallback(
            job_id="busy-000001", announce=False, port=taken.getsockname()[1]
        )
        callback.on_train_begin(make_args(tmp_path), make_state(), TrainerControl())
    assert callback.server is None
    assert "trainer control is off for this run" in capsys.readouterr().err
