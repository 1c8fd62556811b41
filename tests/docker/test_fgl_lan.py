"""fgl across a simulated LAN: two nodes, each a network namespace on a bridge with its own address,
sshd and Docker engine (tests/docker/lan.py). This machine is the user's workstation at 10.77.0.1:
it reaches every node only over SSH, and the nodes start empty (no images).

The headline: ``fgl sync-image`` copies the runtime image to both nodes, then ``fgl up --nodes`` runs
two-node DDP (gloo) training of tiny_llama whose ranks all-reduce across the nodes. Then the failure
paths: a node's container killed mid-run, different image digests, an unknown host key and an
unreachable node.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.docker.conftest import (
    OFFLINE_ENV,
    SMALL_MODEL,
    TINY_LLAMA,
    fgl,
    fgl_bg,
    fgl_env,
    image_id,
    the_run,
    tiny_image,
    wait_for,
)
from tests.docker.lan import LOCAL_DISK, Lan, missing_tools

pytestmark = pytest.mark.docker

UNREACHABLE = "10.77.0.99"  # on the LAN's subnet, no machine answers


@pytest.fixture(scope="module")
def lan(engine):
    """Two fresh nodes; their engines' data (GBs once the image is loaded) is removed afterwards."""
    missing = missing_tools()
    if missing:
        pytest.skip(f"a simulated LAN needs {', '.join(missing)}")
    root = Path(tempfile.mkdtemp(prefix="fgl-lan-", dir="/var/tmp"))
    try:
        with Lan(2, root) as network:
            yield network
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def env(tmp_path, lan):
    """Environment of an fgl call from the workstation: its own HOME (node keys trusted) and runs dir."""
    lan.trust(tmp_path / "home")
    return fgl_env(tmp_path / "home", tmp_path / "runs")


@pytest.fixture
def workspace():
    """The run's workspace, at the same path on both nodes (they share this machine's disk, as nodes
    of a real LAN share an NFS mount)."""
    path = Path(tempfile.mkdtemp(prefix="fgl-ws-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def nodes_arg(lan) -> list[str]:
    return ["--nodes", ",".join(n.spec for n in lan.nodes), "--ssh-key", str(lan.client_key)]


def containers_everywhere(lan, run_id: str | None = None) -> list[str]:
    """Names of the containers (all states) of a run, or of any fgl run, on every node."""
    label = f"fgl.run={run_id}" if run_id else "fgl.run"
    names = []
    for node in lan.nodes:
        done = node.docker("ps", "-a", "--filter", f"label={label}", "--format", "{{.Names}}")
        names += done.stdout.split()
    return names


def joined_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "joined the gloo group" in line]


def train_command(workspace: Path, max_steps: int) -> list[str]:
    return [
        "forgather", "-p", TINY_LLAMA, "train", "--max-steps", str(max_steps),
        "--output-dir", str(workspace / "tiny"),
        f"trainer_args.eval_steps={max_steps}", f"trainer_args.save_steps={max_steps}",
        "trainer_args.logging_steps=1", *SMALL_MODEL,
    ]  # fmt: skip


# ---------------------------------------------------------------- refused before anything starts


def test_unknown_host_key_is_refused_naming_the_host(lan, tmp_path):
    env = fgl_env(tmp_path / "home", tmp_path / "runs")  # no known hosts
    node = lan.nodes[1]
    result = fgl(env, "ps", "--nodes", node.spec, "--ssh-key", str(lan.client_key), timeout=60)
    assert result.returncode != 0
    assert result.stderr.startswith(f"error: node {node.spec}:"), result.stderr
    assert "host key" in result.stderr and "unknown" in result.stderr
    assert f"ssh-keyscan -p 22 {node.address} >> ~/.ssh/known_hosts" in result.stderr


def test_unreachable_node_is_named_and_nothing_starts(lan, env, runtime_image):
    nodes = ",".join([*(n.spec for n in lan.nodes), f"root@{UNREACHABLE}"])
    t0 = time.monotonic()
    result = fgl(
        env, "up", "--nodes", nodes, "--ssh-key", str(lan.client_key), "--image", runtime_image,
        "--", "true", timeout=120,
    )  # fmt: skip
    took = time.monotonic() - t0
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and UNREACHABLE in lines[0], result.stderr
    assert took < 60, f"fgl up took {took:.0f} s to give up on an unreachable node"
    assert containers_everywhere(lan) == []
    assert not Path(env["FGL_RUNS_DIR"]).exists()


# ---------------------------------------------------------------- how SSH finds the nodes


def test_ssh_config_host_aliases_name_the_nodes(lan, env):
    config = Path(env["HOME"]) / ".ssh" / "config"
    config.write_text(
        "".join(
            f"Host trainer{n.index}\n  HostName {n.address}\n  User root\n"
            f"  IdentityFile {lan.client_key}\n"
            for n in lan.nodes
        )
    )
    aliases = ",".join(f"trainer{n.index}" for n in lan.nodes)
    listed = fgl(env, "nodes", "--nodes", aliases)
    assert listed.returncode == 0, listed.stderr
    for node in lan.nodes:
        assert f"ssh://root@{node.address}" in listed.stdout
    result = fgl(env, "ps", "--nodes", aliases, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_ssh_agent_supplies_the_key(lan, env, tmp_path):
    agent_socket = tmp_path / "agent.sock"
    agent = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(agent_socket)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(agent_socket.exists, timeout=10, interval=0.1)
        agent_env = {**env, "SSH_AUTH_SOCK": str(agent_socket)}
        added = subprocess.run(
            ["ssh-add", str(lan.client_key)], env=agent_env, capture_output=True, text=True
        )
        assert added.returncode == 0, added.stderr
        nodes = ",".join(n.spec for n in lan.nodes)
        without = fgl(env, "ps", "--nodes", nodes, timeout=60)  # no key, no agent
        assert without.returncode != 0
        assert f"no SSH key to log in to {lan.nodes[0].spec}:22" in without.stderr
        assert "ssh-add the key" in without.stderr
        result = fgl(agent_env, "ps", "--nodes", nodes, timeout=60)
        assert result.returncode == 0, result.stderr
    finally:
        agent.terminate()
        agent.wait(timeout=10)


# ---------------------------------------------------------------- images between nodes


@pytest.fixture(scope="module")
def synced(lan, runtime_image, tmp_path_factory):
    """The runtime image copied to both nodes by ``fgl sync-image``; (result, seconds)."""
    home = tmp_path_factory.mktemp("sync-home")
    lan.trust(home)
    env = fgl_env(home, home / "runs")
    t0 = time.monotonic()
    result = fgl(env, "sync-image", runtime_image, *nodes_arg(lan), timeout=900)
    return result, time.monotonic() - t0


def test_sync_image_copies_the_runtime_image_to_every_node(lan, synced, runtime_image, env):
    result, seconds = synced
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[1:]}
    assert rows == {n.spec: "copied" for n in lan.nodes}, result.stdout
    expected = image_id(runtime_image)
    for node in lan.nodes:
        assert node.docker("image", "inspect", "-f", "{{.Id}}", runtime_image).stdout.strip() == (
            expected
        )
    print(f"sync-image of {runtime_image} to {len(lan.nodes)} nodes: {seconds:.1f} s")
    again = fgl(env, "sync-image", runtime_image, *nodes_arg(lan), timeout=120)
    assert again.returncode == 0, again.stderr
    assert "copied" not in again.stdout and again.stdout.count("present") == len(lan.nodes)


def test_doctor_checks_every_node_over_ssh(lan, synced, env, runtime_image):
    assert synced[0].returncode == 0, "sync-image failed (see its test)"
    since = str(int(time.time()) - 1)
    result = fgl(env, "doctor", *nodes_arg(lan), "--image", runtime_image, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    for node in lan.nodes:  # the nodes' own python3 probed them over SSH: no probe container
        created = node.docker(
            "events", "--since", since, "--until", str(int(time.time()) + 1),
            "--filter", "type=container", "--filter", "event=create", "--format", "{{.ID}}",
        )  # fmt: skip
        assert created.stdout.split() == [], f"containers were created on {node.netns}"
    rows = [line.split() for line in result.stdout.splitlines()[1:] if line.strip()]
    assert [row[1] for row in rows] == [n.spec for n in lan.nodes]
    image = image_id(runtime_image).removeprefix("sha256:")[:12]
    for row, node in zip(rows, lan.nodes, strict=True):
        assert row[2] == "ok" and image in row  # ssh, and the same image id on both
        assert f"eth0 ({node.address})" in " ".join(row)  # the interface that reaches node 0
        assert row[-1] in ("ok", "warn")
    assert "29500 free" in " ".join(rows[0])


def test_different_image_digests_are_refused_before_anything_starts(lan, env):
    ids = []
    for node in lan.nodes:
        client = node.client()
        try:
            ids.append(tiny_image(client, "fgl-test/lan:differs", f"node {node.index}"))
        finally:
            client.close()
    result = fgl(env, "up", *nodes_arg(lan), "--image", "fgl-test/lan:differs", "--", "true")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "differs between nodes" in result.stderr
    assert "fgl sync-image fgl-test/lan:differs" in result.stderr
    assert all(i[:19] in result.stderr for i in ids), result.stderr
    assert containers_everywhere(lan) == []
    assert not Path(env["FGL_RUNS_DIR"]).exists()


# ---------------------------------------------------------------- the headline: 2-node DDP


def test_two_node_ddp_training_across_the_lan(lan, synced, env, workspace, runtime_image):
    assert synced[0].returncode == 0, "sync-image failed (see its test)"
    t0 = time.monotonic()
    result = fgl(
        env, "up", *nodes_arg(lan), "--image", runtime_image, "--workspace", str(workspace),
        *OFFLINE_ENV, "--", *train_command(workspace, max_steps=4), timeout=600,
    )  # fmt: skip
    took = time.monotonic() - t0
    run = the_run(env)
    logs = [(run / f"node-{i}.log").read_text() for i in range(2)]
    assert result.returncode == 0, result.stderr[-3000:] + logs[0][-3000:] + logs[1][-3000:]
    print(f"2-node DDP of tiny_llama (4 steps) through fgl up: {took:.1f} s")

    ranks = set()
    for i, log in enumerate(logs):
        (line,) = joined_lines(log)  # one rank per node (CPU: one process per node)
        assert line.startswith(f"[node-{i}] rank "), line
        assert " of 2 (local rank 0 of 1)" in line and "all-reduce over 2 ranks ok" in line
        ranks.add(int(line.split()[2]))
    assert ranks == {0, 1}

    record = json.loads((run / "run.json").read_text())
    assert [n["torchrun"][-1] for n in record["nodes"]] == [n.address for n in lan.nodes]
    checkpoint = workspace / "tiny" / "checkpoints" / "checkpoint-4"
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    assert manifest["image_digest"] == image_id(runtime_image)
    assert {p.name for p in checkpoint.glob("rng_state_rank*.pt")} == {
        "rng_state_rank0.pt",
        "rng_state_rank1.pt",
    }
    assert containers_everywhere(lan, run.name) == []

    # both nodes streamed live with their prefixes; the copies are there for later
    assert "[node-0] " in result.stdout and "[node-1] " in result.stdout
    node1 = fgl(env, "logs", run.name, "--node", "1")
    assert node1.returncode == 0 and node1.stdout == logs[1]
    status = fgl(env, "status", run.name)
    assert status.returncode == 0 and "exited 0" in status.stdout


def test_two_ranks_per_node_make_a_world_of_four(lan, synced, env, workspace, runtime_image):
    assert synced[0].returncode == 0, "sync-image failed (see its test)"
    result = fgl(
        env, "up", *nodes_arg(lan), "--nproc-per-node", "2", "--image", runtime_image,
        "--workspace", str(workspace), *OFFLINE_ENV, "--", *train_command(workspace, max_steps=2),
        timeout=600,
    )  # fmt: skip
    run = the_run(env)
    logs = [(run / f"node-{i}.log").read_text() for i in range(2)]
    assert result.returncode == 0, result.stderr[-3000:] + logs[0][-3000:] + logs[1][-3000:]
    ranks = set()
    for log in logs:
        lines = joined_lines(log)
        assert len(lines) == 2, log[-3000:]  # two local ranks on each node
        assert {line.split("(local rank ")[1][0] for line in lines} == {"0", "1"}
        assert all(" of 4 (local rank " in line and "of 2)" in line for line in lines)
        ranks |= {int(line.split()[2]) for line in lines}
    assert ranks == {0, 1, 2, 3}
    checkpoint = workspace / "tiny" / "checkpoints" / "checkpoint-2"
    assert json.loads((checkpoint / "manifest.json").read_text())["world_size"] == 4


# ---------------------------------------------------------------- failure: a node's container dies


def test_killing_one_nodes_container_removes_the_run_everywhere_within_10s(
    lan, synced, env, workspace, runtime_image
):
    assert synced[0].returncode == 0, "sync-image failed (see its test)"
    proc = fgl_bg(
        env, "up", *nodes_arg(lan), "--image", runtime_image, "--workspace", str(workspace),
        *OFFLINE_ENV, "--", *train_command(workspace, max_steps=100000),
    )  # fmt: skip
    runs = Path(env["FGL_RUNS_DIR"])
    try:
        started = wait_for(
            lambda: (
                len(logs := list(runs.glob("*/node-*.log"))) == 2
                and all(joined_lines(p.read_text()) for p in logs)
            ),
            timeout=240,
            interval=0.5,
        )
        assert started, "the two ranks did not join within 240 s"
        run = the_run(env)
        assert len(containers_everywhere(lan, run.name)) == 2
        victim = lan.nodes[1]
        name = victim.docker(
            "ps", "--filter", f"label=fgl.run={run.name}", "--format", "{{.Names}}"
        ).stdout.split()[0]
        t0 = time.monotonic()
        victim.docker("kill", name)
        gone = wait_for(lambda: containers_everywhere(lan, run.name) == [], timeout=10)
        took = time.monotonic() - t0
        assert gone, f"containers left after 10 s: {containers_everywhere(lan, run.name)}"
        code = proc.wait(timeout=30)
        output = proc.output()
        assert code != 0, output[-3000:]
        result = json.loads((run / "result.json").read_text())
        assert result["exit_code"] == code and result["failed_rank"] == 1
        print(f"one node's container killed: every container gone after {took:.1f} s")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for run in runs.glob("fgl-*"):
            fgl(env, "down", run.name, timeout=120)


# ---------------------------------------------------------------- node-local disks: save, resume, fetch


def step_losses(log: str) -> dict[int, str]:
    """{step: loss as printed} from a run's progress lines."""
    return {int(m[1]): m[2] for m in re.finditer(r"step (\d+)/\d+ \| loss (\S+)", log)}


def test_fsdp_on_node_local_disks_saves_resumes_fetches_and_pushes(
    lan, synced, env, runtime_image, tmp_path
):
    """2 nodes x 2 processes of FSDP whose workspace is each node's own disk: every node keeps its
    ranks' shards, a resume on the same nodes continues with the same losses, `fgl fetch` collects
    the checkpoint here (it consolidates into a model), and `fgl push` puts it back on the nodes."""
    assert synced[0].returncode == 0, "sync-image failed (see its test)"
    ws = LOCAL_DISK / f"ws-{tmp_path.name}"
    for node in lan.nodes:
        (node.local_dir / ws.name).mkdir(parents=True)
    out = ws / "tiny"
    train = [
        "forgather", "-p", TINY_LLAMA, "train", "--max-steps", "4", "--output-dir", str(out),
        "trainer_args.eval_steps=4", "trainer_args.save_steps=2", "trainer_args.logging_steps=1",
        "trainer_args.parallelism=fsdp", *SMALL_MODEL,
    ]  # fmt: skip
    up = ["up", *nodes_arg(lan), "--nproc-per-node", "2", "--image", runtime_image,
          "--workspace", str(ws), *OFFLINE_ENV, "--"]  # fmt: skip
    first = fgl(env, *up, *train, timeout=600)
    run = the_run(env)
    log0 = "".join((run / f"node-{i}.log").read_text() for i in range(2))  # rank 0 on either
    assert first.returncode == 0, first.stderr[-3000:] + log0[-3000:]
    assert "is local to each node" in log0

    local = [node.local_dir / ws.name / "tiny" / "checkpoints" for node in lan.nodes]
    held = []
    for checkpoints in local:
        assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2", "checkpoint-4"]
        files = {p.name for p in (checkpoints / "checkpoint-4" / "model").iterdir()}
        assert ".metadata" in files
        held.append(files - {".metadata"})
        assert (checkpoints / "checkpoint-4" / "manifest.json").is_file()
    # each node holds the shards of its own two ranks only
    assert len(held[0]) == len(held[1]) == 2 and not held[0] & held[1]
    assert held[0] | held[1] == {f"__{r}_0.distcp" for r in range(4)}

    # resume from checkpoint 2 on the same nodes: steps 3 and 4 as the straight run had them
    resume = ["--resume", str(out / "checkpoints" / "checkpoint-2")]
    second = fgl(env, *up, *train, *resume, timeout=600)
    runs = sorted(Path(env["FGL_RUNS_DIR"]).glob("fgl-*"), key=lambda p: p.stat().st_mtime)
    log0_resumed = "".join((runs[-1] / f"node-{i}.log").read_text() for i in range(2))
    assert second.returncode == 0, second.stderr[-3000:] + log0_resumed[-3000:]
    straight, resumed = step_losses(log0), step_losses(log0_resumed)
    assert sorted(resumed) == [3, 4], log0_resumed[-3000:]
    assert resumed == {step: straight[step] for step in (3, 4)}

    # fetch: every node's shards in one directory here, checked against the manifest
    fetched = fgl(env, "fetch", run.name, "--to", str(tmp_path / "here"), timeout=300)
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    checkpoint = tmp_path / "here" / "checkpoint-4"
    assert fetched.stdout.strip() == str(checkpoint)
    shards = {p.name for p in (checkpoint / "model").iterdir()}
    assert shards == {f"__{r}_0.distcp" for r in range(4)} | {".metadata"}
    consolidated = subprocess.run(
        ["forgather", "checkpoint", "consolidate", str(checkpoint), str(tmp_path / "model")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert consolidated.returncode == 0, consolidated.stderr[-3000:]
    assert (tmp_path / "model" / "config.json").is_file()
    again = fgl(env, "fetch", run.name, "--to", str(tmp_path / "here"), timeout=300)
    assert again.returncode != 0 and "exists" in again.stderr  # nothing overwritten

    # push it to another output dir on both nodes: each node then has the whole checkpoint
    pushed = fgl(env, "push", *nodes_arg(lan), "--image", runtime_image, "--workspace", str(ws),
                 str(checkpoint), str(ws / "copy"), timeout=300)  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    for node in lan.nodes:
        copy = node.local_dir / ws.name / "copy" / "checkpoints" / "checkpoint-4"
        assert {p.name for p in (copy / "model").iterdir()} == shards
    assert containers_everywhere(lan) == []  # no helper container left behind


# ---------------------------------------------------------------- elastic: a node dies mid-run


def test_elastic_run_loses_a_node_and_finishes_on_the_survivor(
    lan, synced, env, runtime_image, tmp_path
):
    """`fgl up --elastic --min-nodes 1`: node 1 loses power mid-training; fgl removes the attempt's
    containers, restarts on node 0 alone, which resumes the latest checkpoint from its own disk
    (every checkpoint was copied to every node) at the same global batch, and finishes."""
    assert synced[0].returncode == 0, "sync-image failed (see its test)"
    ws = LOCAL_DISK / f"ws-{tmp_path.name}"
    for node in lan.nodes:
        (node.local_dir / ws.name).mkdir(parents=True)
    steps = 48  # node 1 crashes at step 10; node 0 alone does the rest
    train = [
        "forgather", "-p", TINY_LLAMA, "train", "--max-steps", str(steps),
        "--output-dir", str(ws / "tiny"), f"trainer_args.eval_steps={steps}",
        "trainer_args.save_steps=4", "trainer_args.logging_steps=1",
        "trainer_args.parallelism=fsdp", *SMALL_MODEL,
    ]  # fmt: skip
    proc = fgl_bg(
        env, "up", *nodes_arg(lan), "--elastic", "--min-nodes", "1", "--image", runtime_image,
        "--workspace", str(ws), *OFFLINE_ENV, "--", *train,
    )  # fmt: skip
    runs = Path(env["FGL_RUNS_DIR"])
    victim = lan.nodes[1]
    try:
        started = wait_for(
            lambda: any(
                "step 10/" in p.read_text(errors="replace") for p in runs.glob("*/node-*.log")
            ),
            timeout=300,
            interval=0.1,
        )
        assert started, "training did not reach step 10 within 300 s"
        run = the_run(env)
        lan.crash(victim)
        try:
            code = proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            pytest.fail(
                "fgl up --elastic did not finish 600 s after node 1 lost power:\n"
                + proc.output()[-3000:]
            )
        output = proc.output()
        log = (run / "node-0.log").read_text()
        assert code == 0, output[-3000:] + log[-4000:]
        assert "attempt 2 on 1 node(s)" in output, output[-3000:]
        assert "resharding checkpoint" in log and "from fsdp on 2 process(es)" in log
        assert "gradient_accumulation_steps 1 -> 2" in log  # the global batch stays
        final = lan.nodes[0].local_dir / ws.name / "tiny" / "checkpoints" / f"checkpoint-{steps}"
        assert json.loads((final / "manifest.json").read_text())["world_size"] == 1
        record = json.loads((run / "run.json").read_text())
        assert record["elastic"]["attempt"] == 1 and len(record["nodes"]) == 1
        left = lan.nodes[0].docker("ps", "-aq", "--filter", f"label=fgl.run={run.name}")
        assert left.stdout.split() == []
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        lan.revive(victim)
        # the crashed node comes back with its container stopped (nothing of the run runs
        # anywhere); fgl down removes what is left of it (also after a failure, for later tests)
        name = the_run(env).name
        running = victim.docker("ps", "-q", "--filter", f"label=fgl.run={name}")
        down = fgl(env, "down", name, "--nodes", ",".join(n.spec for n in lan.nodes),
                   "--ssh-key", str(lan.client_key), timeout=120)  # fmt: skip
    assert running.stdout.split() == []
    assert down.returncode == 0, down.stderr
    assert containers_everywhere(lan, name) == []


# ---------------------------------------------------------------- serving on a node


def test_serve_copies_the_model_to_a_node_once_and_answers_openai_clients(
    lan, synced, env, runtime_image, trained
):
    import openai

    assert synced[0].returncode == 0, "sync-image failed (see its test)"
    model, _, _ = trained
    node = lan.nodes[1]
    key = ("--node", node.spec, "--ssh-key", str(lan.client_key), "--image", runtime_image)
    first = fgl(env, "serve", str(model), *key, "--port", "18401", "--timeout", "180", timeout=400)
    assert first.returncode == 0, first.stderr
    assert "copied" in first.stderr, first.stderr
    url = first.stdout.strip()
    assert url == f"http://{node.address}:18401"
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0)
    reply = client.completions.create(model=model.name, prompt="Mr. Knightley", max_tokens=5)
    assert reply.usage.completion_tokens == 5
    runs = [the_run(env).name]

    # The same model again (another port): found by its digest, nothing copied.
    second = fgl(env, "serve", str(model), *key, "--port", "18402", "--timeout", "180", timeout=400)
    assert second.returncode == 0, second.stderr
    assert "present" in second.stderr and "copied" not in second.stderr, second.stderr
    runs.append(max(Path(env["FGL_RUNS_DIR"]).iterdir()).name)
    assert len(set(runs)) == 2
    volumes = node.docker("volume", "ls", "-q", "--filter", "label=fgl.model-digest").stdout.split()
    assert len(volumes) == 1

    for run in runs:
        assert fgl(env, "down", run, timeout=120).returncode == 0
        assert containers_everywhere(lan, run) == []
    helpers = node.docker("ps", "-a", "-q", "--filter", "label=fgl.role=model-copy").stdout.split()
    assert helpers == []
