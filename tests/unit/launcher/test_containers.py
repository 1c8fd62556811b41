"""Container kwargs for the Docker SDK, secret masking and the memlock fallback."""

from __future__ import annotations

import docker.errors
import pytest
from fgl.containers import (
    MASK,
    ContainerSpec,
    container_kwargs,
    docker_run_line,
    is_memlock_refusal,
    is_secret,
    masked,
    without_memlock,
)
from fgl.engine_notes import engine_key, load_notes, refuses_memlock, remember_memlock_refusal
from fgl.errors import FglError
from fgl.runs import MemlockFallback

pytestmark = pytest.mark.unit

REFUSAL = (
    "failed to create shim task: OCI runtime create failed: runc create failed: unable to start container "
    "process: error during container init: error setting rlimits for ready process: error setting rlimit "
    "type 8: operation not permitted: unknown"
)


def spec(**kw):
    base = dict(
        image="forgather:runtime",
        command=["torchrun", "--no-python", "env"],
        name="fgl-x-0",
        run_id="fgl-x",
        rank=0,
        node="gpu0",
        nnodes=2,
        env={"HF_TOKEN": "hf_abcdef", "A": "1"},
        workspace="/data/ws",
        uid=1000,
        gid=1001,
    )
    base.update(kw)
    return ContainerSpec(**base)


def test_kwargs_have_host_network_ipc_init_ulimits_labels():
    kw = container_kwargs(spec())
    assert kw["network_mode"] == "host" and kw["init"] is True
    # a private IPC namespace with a 16g /dev/shm unless asked otherwise
    assert kw["ipc_mode"] == "private" and kw["shm_size"] == "16g"
    assert {(u["Name"], u["Soft"], u["Hard"]) for u in kw["ulimits"]} == {
        ("stack", 67108864, 67108864),
        ("memlock", -1, -1),
    }
    assert kw["labels"] == {
        "fgl.run": "fgl-x",
        "fgl.node-rank": "0",
        "fgl.role": "train",
        "fgl.node": "gpu0",
        "fgl.nnodes": "2",
    }
    assert kw["volumes"] == {"/data/ws": {"bind": "/data/ws", "mode": "rw"}}
    assert kw["working_dir"] == "/data/ws"
    assert kw["environment"] == {"HF_TOKEN": "hf_abcdef", "A": "1", "PUID": "1000", "PGID": "1001"}
    assert kw["detach"] and not kw["tty"]
    assert "device_requests" not in kw


def test_shm_size_sizes_the_private_shm_and_host_shares_the_hosts_ipc():
    kw = container_kwargs(spec(shm_size="64g"))
    assert kw["ipc_mode"] == "private" and kw["shm_size"] == "64g"
    kw = container_kwargs(spec(shm_size="host"))
    assert kw["ipc_mode"] == "host" and "shm_size" not in kw


@pytest.mark.parametrize(("gpus", "count"), [("all", -1), ("2", 2)])
def test_gpu_device_requests_only_where_gpus(gpus, count):
    (req,) = container_kwargs(spec(gpus=gpus))["device_requests"]
    assert req["Count"] == count and req["Capabilities"] == [["gpu"]]


def test_mounts_and_working_dir():
    kw = container_kwargs(spec(mounts=["/m:/models:ro"], working_dir="/data/ws/sub"))
    assert kw["volumes"]["/m"] == {"bind": "/models", "mode": "ro"}
    assert kw["working_dir"] == "/data/ws/sub"


def test_no_workspace_means_no_mount_and_no_working_dir():
    kw = container_kwargs(spec(workspace=None))
    assert "volumes" not in kw and "working_dir" not in kw


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("HF_TOKEN", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("DB_PASSWORD", True),
        ("api_key", True),
        ("HF_HOME", False),
        # each of these printed in clear before (issue 17)
        ("DB_PASSWD", True),
        ("PGPASS", True),
        ("GH_PAT", True),
        ("CREDENTIALS", True),
        ("AUTH", True),
        ("SMTP_PASS", True),
        ("PATH", False),
        ("PYTHONPATH", False),
        ("NCCL_SOCKET_IFNAME", False),
    ],
)
def test_secret_keys(key, secret):
    assert is_secret(key) is secret


def test_dry_run_line_masks_secret_values_everywhere():
    kw = container_kwargs(spec(command=["sh", "-c", "echo hf_abcdef"]))
    line = docker_run_line(kw)
    assert "hf_abcdef" not in line
    assert f"-e=HF_TOKEN={MASK}" in line and "-e=A=1" in line
    assert "--ulimit=memlock=-1" in line and "--init" in line and "--network=host" in line
    assert masked({"X_KEY": "v", "Y": "w"}) == {"X_KEY": MASK, "Y": "w"}


def test_url_passwords_and_secret_options_are_masked_in_commands_and_env():
    from fgl.containers import mask_command

    url = "postgres://alice:s3cr3t@db:5432/runs"
    assert masked({"DATABASE_URL": url}) == {"DATABASE_URL": "postgres://alice:******@db:5432/runs"}
    command = [
        "forgather", "train", "--api-key", "sk-live-123", "--token=abc", url,
        "trainer_args.hub_token=hf_zzz", "--data", "/data/x", "plain=1",
    ]  # fmt: skip
    shown = mask_command(command, {"HF_TOKEN": "hf_secret"})
    assert shown == [
        "forgather", "train", "--api-key", MASK, f"--token={MASK}",
        "postgres://alice:******@db:5432/runs", f"trainer_args.hub_token={MASK}",
        "--data", "/data/x", "plain=1",
    ]  # fmt: skip
    kw = container_kwargs(spec(command=command))
    line = docker_run_line(kw)
    for secret in ("sk-live-123", "abc", "s3cr3t", "hf_zzz"):
        assert secret not in line


def test_labels_hold_no_environment_values():
    kw = container_kwargs(spec())
    values = set(kw["environment"].values())
    assert not values & set(kw["labels"].values())


def test_without_memlock_keeps_the_stack_limit():
    kw = without_memlock(container_kwargs(spec()))
    assert [u["Name"] for u in kw["ulimits"]] == ["stack"]


def test_memlock_refusal_is_recognised():
    assert is_memlock_refusal(docker.errors.APIError("500 Server Error", explanation=REFUSAL))
    assert not is_memlock_refusal(
        docker.errors.APIError("500", explanation="no space left on device")
    )


def refusing_engine(calls):
    """create_and_start that refuses memlock the way runc does here (the only fake: the refusal)."""

    def create_and_start(kwargs):
        calls.append([u["Name"] for u in kwargs["ulimits"]])
        if "memlock" in calls[-1]:
            raise docker.errors.APIError("500 Server Error", explanation=REFUSAL)
        return "started"

    return create_and_start


def test_auto_memlock_falls_back_and_warns_once():
    calls, warnings = [], []
    fallback = MemlockFallback("auto", on_warn=warnings.append)
    kw = container_kwargs(spec())
    assert fallback.start("gpu0", kw, refusing_engine(calls)) == "started"
    assert fallback.start("gpu0", kw, refusing_engine(calls)) == "started"
    assert calls == [["stack", "memlock"], ["stack"], ["stack"]]  # the second start skips memlock
    assert len(warnings) == 1 and "memlock" in warnings[0]


def test_a_refusal_is_remembered_and_skipped_in_the_next_run(tmp_path):
    notes = tmp_path / "engines.json"
    key = engine_key({"ID": "ABCD", "ServerVersion": "27.0", "KernelVersion": "6.1"})
    calls, warnings = [], []
    first = MemlockFallback(
        "auto", on_warn=warnings.append, on_refused=lambda n: remember_memlock_refusal(key, notes)
    )
    first.start("gpu0", container_kwargs(spec()), refusing_engine(calls))
    assert calls == [["stack", "memlock"], ["stack"]]
    assert refuses_memlock(key, load_notes(notes))

    calls.clear()
    again = MemlockFallback("auto", on_warn=warnings.append, remembered=["gpu0"])
    again.start("gpu0", container_kwargs(spec()), refusing_engine(calls))
    assert calls == [["stack"]]  # no refused try any more
    assert "in an earlier run" in warnings[-1]
    # an upgraded engine (another version) is asked again; memlock: on still asks
    assert not refuses_memlock(
        engine_key({"ID": "ABCD", "ServerVersion": "28.0", "KernelVersion": "6.1"}),
        load_notes(notes),
    )
    assert MemlockFallback("on", remembered=["gpu0"]).refused == set()


def test_unreadable_engine_notes_are_ignored(tmp_path):
    notes = tmp_path / "engines.json"
    notes.write_text("{not json")
    assert load_notes(notes) == {}
    remember_memlock_refusal("k", notes)
    assert refuses_memlock("k", load_notes(notes))
    assert engine_key({}) is None and not refuses_memlock(None, load_notes(notes))


def test_memlock_on_makes_the_refusal_an_error():
    with pytest.raises(FglError, match="refuses --ulimit memlock=-1"):
        MemlockFallback("on", on_warn=lambda m: None).start(
            "gpu0", container_kwargs(spec()), refusing_engine([])
        )


def test_memlock_off_never_asks():
    calls = []
    MemlockFallback("off").start("gpu0", container_kwargs(spec()), refusing_engine(calls))
    assert calls == [["stack"]]


def test_other_engine_errors_are_not_retried():
    def broken(kwargs):
        raise docker.errors.APIError("500", explanation="image not found")

    with pytest.raises(docker.errors.APIError):
        MemlockFallback("auto").start("gpu0", container_kwargs(spec()), broken)


def test_a_workspace_of_home_or_root_is_warned_about(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    from fgl.launch import settings_from

    monkeypatch.setenv("HOME", str(tmp_path))
    for workspace in ("/", str(tmp_path), "~"):
        settings_from(None, image="img", env={}, env_file=None, workspace=workspace)
        err = capsys.readouterr().err
        shown = "/" if workspace == "/" else str(Path(tmp_path).resolve())
        assert f"warning: the workspace is {shown}: every node's containers see all of it" in err
    project = tmp_path / "project"
    project.mkdir()
    settings_from(None, image="img", env={}, env_file=None, workspace=str(project))
    assert capsys.readouterr().err == ""
