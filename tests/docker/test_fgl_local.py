"""fgl against the real local Docker engine (and, where sshd is installed, the same engine over SSH,
plus a second engine as another node).

Every test runs the real ``fgl`` command in a subprocess. The engine comes from the harness in
tests/docker/conftest.py. Launcher mechanics use ``$FGL_TEST_IMAGE`` when set, else
``fgl-test/torchrun:bookworm``: a debootstrap Debian with python3 and the CPU torch wheel (for
torchrun), built once and kept; one test runs the project's runtime image (``runtime_image``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.docker.conftest import fgl, fgl_bg, fgl_env, the_run, tiny_image

pytestmark = pytest.mark.docker

FALLBACK_IMAGE = "fgl-test/torchrun:bookworm"
TORCH_WHEELS = ("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",)
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def docker_client(engine):
    """A Docker SDK client for the engine the harness (tests/docker/conftest.py) made sure answers."""
    import docker

    client = docker.DockerClient(base_url="unix:///var/run/docker.sock")
    yield client
    client.close()


def _build_fallback_image() -> None:
    wheel = next((w for w in TORCH_WHEELS if Path(w).exists()), None)
    if not wheel or not shutil.which("debootstrap"):
        pytest.skip(f"{FALLBACK_IMAGE} is absent and debootstrap or the torch wheel is missing")
    work = Path(tempfile.mkdtemp(prefix="fgl-image-"))
    root = work / "rootfs"
    try:
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,iproute2,procps",
                "bookworm",
                str(root),
            ],
            check=True,
            capture_output=True,
            timeout=900,
        )
        site = root / "usr/local/lib/python3.11/dist-packages"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", str(site), wheel],
            check=True,
            capture_output=True,
            timeout=900,
        )
        torchrun = root / "usr/local/bin/torchrun"
        torchrun.write_text(
            "#!/usr/bin/python3\nimport sys\nfrom torch.distributed.run import main\nsys.exit(main())\n"
        )
        torchrun.chmod(0o755)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            [DOCKER, "import", "-c", "ENV PATH=/usr/local/bin:/usr/bin:/bin", "-", FALLBACK_IMAGE],
            stdin=tar.stdout,
            check=True,
            capture_output=True,
            timeout=600,
        )
        tar.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def image(docker_client):
    """An image with python3 and torchrun."""
    import docker.errors

    name = os.environ.get("FGL_TEST_IMAGE", FALLBACK_IMAGE)
    try:
        docker_client.images.get(name)
    except docker.errors.ImageNotFound:
        if name != FALLBACK_IMAGE:
            pytest.skip(f"FGL_TEST_IMAGE={name} is not on the engine")
        _build_fallback_image()
    return name


@pytest.fixture
def env(tmp_path):
    """The environment of every fgl call: its own runs dir and HOME (empty known_hosts)."""
    return fgl_env(tmp_path / "home", tmp_path / "runs")


def run_containers(docker_client, run_id=None):
    label = f"fgl.run={run_id}" if run_id else "fgl.run"
    return docker_client.containers.list(all=True, filters={"label": label})


def wait_for(predicate, timeout=60.0, step=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("timed out waiting")


def log_says(run_dir_parent: Path, text: str):
    def check():
        for log in run_dir_parent.glob("*/node-*.log"):
            if text in log.read_text():
                return log.parent
        return None

    return check


# ---------------------------------------------------------------- fgl run


def test_run_propagates_exit_code_and_removes_the_container(docker_client, image, env):
    before = {c.id for c in run_containers(docker_client)}
    result = fgl(
        env, "run", "--image", image, "--", "sh", "-c", "echo out-line; echo err-line >&2; exit 7"
    )
    assert result.returncode == 7, result.stderr
    assert "out-line" in result.stdout and "err-line" in result.stdout
    assert {c.id for c in run_containers(docker_client)} == before


# ---------------------------------------------------------------- fgl up


def test_up_with_the_runtime_image(docker_client, runtime_image, env):
    cmd = 'echo rank=$RANK world=$WORLD_SIZE iface=$NCCL_SOCKET_IFNAME; python -c "import torch"'
    result = fgl(
        env,
        "up",
        "--nodes",
        "localhost",
        "--image",
        runtime_image,
        "--workspace",
        "/tmp",
        "--",
        "sh",
        "-c",
        cmd,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[node-0] rank=0 world=1 iface=lo" in (the_run(env) / "node-0.log").read_text()


def test_up_one_node_runs_under_torchrun_and_copies_logs(docker_client, image, env):
    cmd = "env | sort | grep -E '^(RANK|WORLD_SIZE|FGL_|NCCL_SOCKET|GLOO_SOCKET|HF_TOKEN|PUID)'"
    result = fgl(
        env,
        "up",
        "--nodes",
        "localhost",
        "--image",
        image,
        "-e",
        "HF_TOKEN=hf_sekrit",
        "--",
        "sh",
        "-c",
        cmd,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    run = the_run(env)
    log = (run / "node-0.log").read_text()
    for line in (
        "[node-0] RANK=0",
        "[node-0] WORLD_SIZE=1",
        "[node-0] NCCL_SOCKET_IFNAME=lo",
        f"[node-0] FGL_RUN_ID={run.name}",
        "[node-0] HF_TOKEN=******",
    ):
        assert line in log.splitlines(), log
    assert "hf_sekrit" not in log + result.stdout + result.stderr
    assert "[node-0] RANK=0" in result.stdout
    assert json.loads((run / "result.json").read_text())["exit_code"] == 0
    record = json.loads((run / "run.json").read_text())
    assert "is_host=1" in record["nodes"][0]["torchrun"] and record["env"]["HF_TOKEN"] == "******"
    assert run_containers(docker_client, run.name) == []

    status = fgl(env, "status", run.name)
    assert status.returncode == 0 and "exited 0" in status.stdout
    logs = fgl(env, "logs", run.name)
    assert logs.returncode == 0 and logs.stdout == log
    listing = fgl(env, "status")
    assert run.name in listing.stdout


def test_failing_job_exit_code_and_no_container_left(docker_client, image, env):
    result = fgl(
        env,
        "up",
        "--nodes",
        "localhost",
        "--image",
        image,
        "--",
        "sh",
        "-c",
        "echo failing; exit 3",
    )
    assert result.returncode == 3, result.stdout + result.stderr
    run = the_run(env)
    assert run_containers(docker_client, run.name) == []
    assert json.loads((run / "result.json").read_text())["exit_code"] == 3
    assert "[node-0] failing" in (run / "node-0.log").read_text()


def test_ctrl_c_removes_every_container_of_the_run_within_10s(docker_client, image, env):
    proc = fgl_bg(
        env,
        "up",
        "--nodes",
        "localhost",
        "--image",
        image,
        "--",
        "sh",
        "-c",
        "echo started; sleep 300",
    )
    try:
        run = wait_for(log_says(Path(env["FGL_RUNS_DIR"]), "[node-0] started"), timeout=60)
        assert len(run_containers(docker_client, run.name)) == 1
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=15)
        wait_for(
            lambda: run_containers(docker_client, run.name) == [],
            timeout=max(0.1, 10 - (time.monotonic() - t0)),
        )
        assert time.monotonic() - t0 < 10
        assert code == 130, proc.output()
        assert json.loads((run / "result.json").read_text())["exit_code"] == 130
    finally:
        stop(env, proc, Path(env["FGL_RUNS_DIR"]))


def test_down_mid_run_ends_the_run_and_twice_is_fine(docker_client, image, env):
    proc = fgl_bg(
        env,
        "up",
        "--nodes",
        "localhost",
        "--image",
        image,
        "--",
        "sh",
        "-c",
        "echo started; sleep 300",
    )
    try:
        run = wait_for(log_says(Path(env["FGL_RUNS_DIR"]), "[node-0] started"), timeout=60)
        ps = fgl(env, "ps", "--nodes", "localhost", "--run", run.name)
        assert ps.returncode == 0 and f"{run.name}-0" in ps.stdout and "running" in ps.stdout
        follower = fgl_bg(env, "logs", run.name, "-f")
        first = fgl(env, "down", run.name)  # nodes come from the run dir
        assert first.returncode == 0, first.stderr
        assert f"{run.name}-0" in first.stderr
        assert run_containers(docker_client, run.name) == []
        assert proc.wait(timeout=15) != 0
        assert follower.wait(timeout=15) == 0
        assert "[node-0] started" in follower.output()
        second = fgl(env, "down", run.name, "--nodes", "localhost")
        assert second.returncode == 0 and "nothing of" in second.stderr
    finally:
        stop(env, proc, Path(env["FGL_RUNS_DIR"]))


def test_missing_image_is_refused_before_anything_starts(docker_client, image, env):
    before = {c.id for c in docker_client.containers.list(all=True)}
    result = fgl(env, "up", "--nodes", "localhost", "--image", "fgl-test/absent:none", "--", "true")
    assert result.returncode == 2
    assert (
        "missing on localhost" in result.stderr
        and "fgl sync-image fgl-test/absent:none" in result.stderr
    )
    assert len(result.stderr.strip().splitlines()) == 1
    assert {c.id for c in docker_client.containers.list(all=True)} == before
    assert not Path(env["FGL_RUNS_DIR"]).exists()


def test_dry_run_prints_the_plan_and_starts_nothing(docker_client, image, env):
    result = fgl(
        env,
        "up",
        "--nodes",
        "localhost",
        "--image",
        image,
        "-e",
        "API_KEY=k3y-value",
        "--dry-run",
        "--",
        "python3",
        "-V",
    )
    assert result.returncode == 0, result.stderr
    assert "--rdzv-conf is_host=1" in result.stdout and "--local-addr 127.0.0.1" in result.stdout
    assert "API_KEY=******" in result.stdout and "k3y-value" not in result.stdout
    assert not Path(env["FGL_RUNS_DIR"]).exists()
    assert run_containers(docker_client) == []


def test_busy_port_is_refused(docker_client, image, env):
    busy = socket.socket()
    busy.bind(("0.0.0.0", 0))
    busy.listen()
    try:
        port = str(busy.getsockname()[1])
        result = fgl(
            env, "up", "--nodes", "localhost", "--image", image, "--port", port, "--", "true"
        )
    finally:
        busy.close()
    assert result.returncode == 2 and f"port {port} is in use on node 0" in result.stderr


# ---------------------------------------------------------------- doctor, images, serve


def test_doctor_on_the_local_engine(docker_client, image, env):
    result = fgl(env, "doctor", "--nodes", "localhost", "--image", image)
    assert result.returncode == 0, result.stdout + result.stderr
    row = result.stdout.splitlines()[1]
    assert "lo (127.0.0.1)" in row and "free" in row and row.rstrip().endswith(("ok", "warn"))


def test_doctor_probes_in_a_container_where_the_host_has_no_python3(docker_client, image, env):
    no_python = {**env, "PATH": "/nonexistent"}  # fgl itself runs as sys.executable
    since = int(time.time()) - 1
    result = fgl(no_python, "doctor", "--nodes", "localhost", "--image", image)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "lo (127.0.0.1)" in result.stdout.splitlines()[1]
    events = docker_client.events(
        since=since, until=int(time.time()) + 1, decode=True,
        filters={"type": "container", "event": "create", "label": "fgl.role=probe"},
    )  # fmt: skip
    assert len(list(events)) == 1


def test_doctor_fails_for_a_missing_image(docker_client, image, env):
    result = fgl(env, "doctor", "--nodes", "localhost", "--image", "fgl-test/absent:none")
    assert result.returncode == 1 and "missing" in result.stdout


def test_sync_image_skips_a_node_that_has_it(docker_client, image, env):
    result = fgl(env, "sync-image", image, "--nodes", "localhost")
    assert result.returncode == 0, result.stderr
    assert "present" in result.stdout


def test_pull_without_a_registry_says_so(docker_client, env):
    result = fgl(env, "pull", "fgl-test/not-on-any-registry:1", "--nodes", "localhost", timeout=90)
    assert result.returncode != 0
    assert "node localhost:" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_serve_answers_openai_clients_and_down_removes_it(
    docker_client, runtime_image, trained, env
):
    import openai

    model, _, _ = trained
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    result = fgl(
        env, "serve", str(model), "--port", str(port), "--image", runtime_image, "--timeout", "120",
        "--", "--max-batch-size", "4",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    url = result.stdout.strip()
    assert url == f"http://127.0.0.1:{port}"
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0)
    assert [m.id for m in client.models.list().data] == [model.name]
    assert (
        client.completions.create(
            model=model.name, prompt="Emma", max_tokens=4
        ).usage.completion_tokens
        == 4
    )
    run = the_run(env).name
    (container,) = run_containers(docker_client, run)
    assert container.labels["fgl.role"] == "serve"
    assert "--max-batch-size" in container.attrs["Config"]["Cmd"]
    status = fgl(env, "status", run)
    assert f"{url}" in status.stdout and "serve" in status.stdout
    assert fgl(env, "down", run).returncode == 0
    assert run_containers(docker_client, run) == []


def test_serve_of_a_directory_without_a_model_is_one_line(env, runtime_image, tmp_path):
    result = fgl(env, "serve", str(tmp_path), "--image", runtime_image)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path} holds neither a model (config.json) nor a checkpoint (manifest.json)"
    ]


# ---------------------------------------------------------------- the same engine over SSH


def start_sshd(d: Path, docker_host: str | None = None):
    """An sshd on 127.0.0.1 with its own host key and authorized key; returns (process, node info)."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")], check=True
    )
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client_key")], check=True
    )
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    os.chmod(d / "authorized_keys", 0o600)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    env = "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin" + (
        f" DOCKER_HOST={docker_host}" if docker_host else ""
    )
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\nStrictModes no\n"
        f"PidFile {d}/sshd.pid\nSetEnv {env}\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.DEVNULL
    )
    wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, timeout=10)
    return proc, {"port": port, "key": str(d / "client_key"), "node": f"root@127.0.0.1:{port}"}


def needs_sshd():
    if not Path("/usr/sbin/sshd").exists() or os.geteuid() != 0:
        pytest.skip("needs root and openssh-server")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """An sshd on 127.0.0.1 whose sessions reach the local engine."""
    needs_sshd()
    proc, node = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield node
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def second_engine(docker_client):
    """Another node with an empty engine: a one-node simulated LAN (tests/docker/lan.py), reached
    over SSH at its own address. Yields (its Docker SDK client, node info)."""
    from tests.docker.lan import Lan, missing_tools

    missing = missing_tools()
    if missing:
        pytest.skip(f"a simulated LAN needs {', '.join(missing)}")
    root = Path(tempfile.mkdtemp(prefix="fgl-engine2-", dir="/var/tmp"))
    try:
        with Lan(1, root, name="fgs", subnet="10.78.0") as lan:
            (node,) = lan.nodes
            client = node.client()
            try:
                yield (
                    client,
                    {
                        "port": 22,
                        "key": str(lan.client_key),
                        "node": node.spec,
                        "host": node.address,
                    },
                )
            finally:
                client.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def two_nodes(env, sshd, tmp_path):
    """An inventory of this engine twice: node 0 by socket, node 1 over SSH with its own loopback address.

    Two nodes on one host need distinct addresses: c10d tells nodes apart by (address, pid).
    """
    trust(env, sshd)
    inv = tmp_path / "fgl.yaml"
    inv.write_text(
        f"workspace: /tmp\nnodes:\n  - localhost\n  - host: {sshd['node']}\n    address: 127.0.0.2\n"
        f"    ssh_key: {sshd['key']}\n"
    )
    return ["-i", str(inv)]


def stop(env, proc, run_dir_parent):
    """Kill a background fgl left running by a failed test, and remove its containers."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for run in Path(run_dir_parent).glob("fgl-*"):
        fgl(env, "down", run.name)


def trust(env, sshd):
    scan = subprocess.run(
        ["ssh-keyscan", "-p", str(sshd["port"]), sshd.get("host", "127.0.0.1")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    Path(env["HOME"], ".ssh", "known_hosts").write_text(scan.stdout)


def test_unknown_host_key_is_refused_with_the_keyscan_command(docker_client, env, sshd):
    result = fgl(env, "ps", "--nodes", sshd["node"], "--ssh-key", sshd["key"], timeout=30)
    assert result.returncode != 0
    assert f"ssh-keyscan -p {sshd['port']} 127.0.0.1 >> ~/.ssh/known_hosts" in result.stderr
    assert result.stderr.startswith(f"error: node {sshd['node']}:")


def test_run_over_ssh(docker_client, image, env, sshd):
    trust(env, sshd)
    result = fgl(
        env,
        "run",
        "--node",
        sshd["node"],
        "--ssh-key",
        sshd["key"],
        "--image",
        image,
        "--workspace",
        "/tmp",
        "--",
        "sh",
        "-c",
        "echo via-ssh; exit 4",
    )
    assert result.returncode == 4, result.stderr
    assert "via-ssh" in result.stdout


def test_two_nodes_one_over_ssh_share_one_rendezvous(docker_client, image, env, sshd, tmp_path):
    inv = two_nodes(env, sshd, tmp_path)
    cmd = "echo rank=$RANK world=$WORLD_SIZE group=$GROUP_RANK"
    result = fgl(env, "up", *inv, "--image", image, "--", "sh", "-c", cmd, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    run = the_run(env)
    seen = set()
    for i in (0, 1):
        lines = [ln for ln in (run / f"node-{i}.log").read_text().splitlines() if " rank=" in ln]
        assert (
            len(lines) == 1 and lines[0].startswith(f"[node-{i}] rank=") and "world=2" in lines[0]
        )
        seen.add(lines[0].split()[1])
    # c10d orders group ranks by node address, not by fgl's node index (--rdzv static pins them).
    assert seen == {"rank=0", "rank=1"}
    record = json.loads((run / "run.json").read_text())
    assert [n["torchrun"][-1] for n in record["nodes"]] == ["127.0.0.1", "127.0.0.2"]
    assert run_containers(docker_client, run.name) == []


def test_static_rendezvous_pins_group_rank_to_the_node_index(
    docker_client, image, env, sshd, tmp_path
):
    inv = two_nodes(env, sshd, tmp_path)
    cmd = "echo rank=$RANK group=$GROUP_RANK"
    result = fgl(
        env, "up", "--rdzv", "static", *inv, "--image", image, "--", "sh", "-c", cmd, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    run = the_run(env)
    assert "[node-0] rank=0 group=0" in (run / "node-0.log").read_text()
    assert "[node-1] rank=1 group=1" in (run / "node-1.log").read_text()


def test_one_node_failing_stops_the_other_and_gives_its_code(
    docker_client, image, env, sshd, tmp_path
):
    inv = two_nodes(env, sshd, tmp_path)
    cmd = 'if [ "$FGL_NODE_RANK" = 1 ]; then sleep 1; exit 5; fi; sleep 300'
    t0 = time.monotonic()
    result = fgl(env, "up", *inv, "--image", image, "--", "sh", "-c", cmd, timeout=120)
    assert result.returncode == 5, result.stdout + result.stderr
    run = the_run(env)
    assert json.loads((run / "result.json").read_text())["failed_rank"] == 1
    assert run_containers(docker_client, run.name) == []
    assert time.monotonic() - t0 < 60


def test_sigterm_on_two_nodes_removes_both_within_10s(docker_client, image, env, sshd, tmp_path):
    inv = two_nodes(env, sshd, tmp_path)
    proc = fgl_bg(env, "up", *inv, "--image", image, "--", "sh", "-c", "echo started; sleep 300")
    runs = Path(env["FGL_RUNS_DIR"])
    try:
        wait_for(
            lambda: (
                len(logs := list(runs.glob("*/node-*.log"))) == 2
                and all("started" in p.read_text() for p in logs)
            ),
            timeout=90,
        )
        run = the_run(env)
        assert len(run_containers(docker_client, run.name)) == 2
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
        wait_for(
            lambda: run_containers(docker_client, run.name) == [],
            timeout=max(0.1, 10 - (time.monotonic() - t0)),
        )
        assert time.monotonic() - t0 < 10 and code == 143
    finally:
        stop(env, proc, runs)


# ---------------------------------------------------------------- a second engine: images between nodes


def test_sync_image_copies_to_the_node_lacking_it_then_skips_it(
    docker_client, env, sshd, second_engine
):
    client2, node2 = second_engine
    trust(env, node2)
    image_id = tiny_image(docker_client, "fgl-test/tiny:sync", "sync me")
    nodes = f"localhost,{node2['node']}"
    first = fgl(
        env, "sync-image", "fgl-test/tiny:sync", "--nodes", nodes, "--ssh-key", node2["key"]
    )
    assert first.returncode == 0, first.stderr
    rows = {line.split()[0]: line.split()[1] for line in first.stdout.splitlines()[1:]}
    assert rows == {"localhost": "present", node2["node"]: "copied"}
    assert client2.images.get("fgl-test/tiny:sync").id == image_id
    again = fgl(
        env, "sync-image", "fgl-test/tiny:sync", "--nodes", nodes, "--ssh-key", node2["key"]
    )
    assert again.returncode == 0 and "copied" not in again.stdout


def test_different_image_ids_are_refused_naming_nodes_and_ids(docker_client, env, second_engine):
    client2, node2 = second_engine
    trust(env, node2)
    mine = tiny_image(docker_client, "fgl-test/tiny:differs", "here")
    theirs = tiny_image(client2, "fgl-test/tiny:differs", "there")
    before = len(docker_client.containers.list(all=True)), len(client2.containers.list(all=True))
    result = fgl(
        env,
        "up",
        "--nodes",
        f"localhost,{node2['node']}",
        "--ssh-key",
        node2["key"],
        "--image",
        "fgl-test/tiny:differs",
        "--",
        "true",
    )
    assert result.returncode == 2
    assert (
        "differs between nodes" in result.stderr
        and "fgl sync-image fgl-test/tiny:differs" in result.stderr
    )
    assert (
        mine[:19] in result.stderr
        and theirs[:19] in result.stderr
        and node2["node"] in result.stderr
    )
    assert (
        len(docker_client.containers.list(all=True)),
        len(client2.containers.list(all=True)),
    ) == before


def test_image_missing_on_one_node_is_refused_naming_it(docker_client, env, second_engine):
    client2, node2 = second_engine
    trust(env, node2)
    tiny_image(docker_client, "fgl-test/tiny:only-here", "x")
    result = fgl(
        env,
        "up",
        "--nodes",
        f"localhost,{node2['node']}",
        "--ssh-key",
        node2["key"],
        "--image",
        "fgl-test/tiny:only-here",
        "--",
        "true",
    )
    assert result.returncode == 2
    assert f"missing on {node2['node']}" in result.stderr
    assert client2.containers.list(all=True) == []
