"""What `fgl up` costs: time to every rank running, and wall time, against the same containers
started by hand with the same engine calls, on a simulated LAN of 1, 2, 4 and 8 nodes.

The nodes are network namespaces on a bridge, each with its own address, sshd and Docker engine
(tests/docker/lan.py; a LAN named "fglb" on 10.79.0.0/24, so it never meets the test suite's "fgl"
LAN on 10.77.0.0/24). This machine is the workstation at 10.79.0.1 and reaches every node only over
SSH, as a user's laptop would. The nodes' engine data lives under `--cache`
(~/.cache/forgather-tests/lan-bench); the image (`--image`, default fgl-test/torchrun:bookworm:
Debian, python3, CPU torch and a torchrun script) is copied to every node with `fgl sync-image`,
which is timed and printed too (a node that has it already is skipped). The engine data is kept
for the next run, so the image is copied to the nodes only once; `--clean` deletes it at the end.

The workload prints one line as soon as its rank runs and exits: `sh -c 'echo RANK-RUNNING $RANK
$WORLD_SIZE'`, run as `torchrun <rendezvous flags> --no-python sh -c ...` in one container per node
(fgl wraps every command so), so "every rank running" means that the c10d rendezvous across all the
nodes completed and every node's worker printed its line. Two ways, alternating each round (order
swapped every other round), `--rounds` (3) rounds per node count, medians reported:

* `fgl up`   t0 just before `python -m fgl.cli up --nodes ... --image IMAGE --workspace /tmp -- sh
             -c ...` starts; a loop polling every 20 ms reads the run's node logs
             ($FGL_RUNS_DIR/<run>/node-<i>.log) until every node shows its marker line: "to every
             rank running"; then it polls until the process exits (it must exit 0): "wall".
* `by hand`  what a person's script would do, in this process (Python and the Docker SDK already
             imported): one thread per node opens `docker.DockerClient("ssh://root@ADDR")` (paramiko,
             ~/.ssh/config and known_hosts), `containers.create(**kwargs)` + `start()`, follows the
             log stream, then `wait()` and `remove(force=True)`; the same 20 ms loop watches for the
             markers. The kwargs are the exact ones fgl builds (fgl's own planning functions:
             connect_all, the pre-flight `gather`, make_plan, container_spec, container_kwargs) but
             computed untimed beforehand, with a fresh run id per round: no pre-flight, no probe
             containers, no planning inside the timed part. Its torchrun flags are checked against
             the ones the fgl run of the same node count recorded in run.json. Where the engines
             refuse the memlock=-1 ulimit (checked once, untimed), fgl (memlock auto) learns it
             from the first refusal (the untimed warm-up) and remembers it per engine, so the
             timed runs start without it, as the script does.

"overhead" is the median over rounds of the paired difference fgl - by hand. Goals (from the
issue): overhead to every rank running <= 2 s at every node count, and flat in the node count
(overhead at the largest minus at the smallest count within +-0.5 s: this script's reading of
"flat"). On a machine with few cores the *absolute* times grow with the node count because every
container's torchrun imports torch on the same cores (8 nodes = 8 torch imports on 2 cores): that
hits both ways alike and is the noise of the headline; the overhead column is what measures fgl.
A second table therefore times "to every container started", from each node engine's `start`
events (read on the node's local socket, off the timed path): that is before torch is imported, so
its overhead is fgl's cost with little of the contention noise.

Then, per node count, one more `fgl up` with timestamps (the same CLI, started through a small
`python -c` wrapper that marks the end of Python's start and of the imports, and wraps
connect_all, gather (pre-flight), each probe container, each create+start and _start_all) tells
where fgl's time goes, next to the by-hand script's phases.

    python benchmarks/launch_overhead.py [--nodes 1,2,4,8] [--rounds 3] [--image IMAGE]
        [--cache DIR] [--clean] [--warmup 1] [--memlock auto|on|off] [--no-breakdown]

About 7 minutes on 2 cores once the nodes have the image (the first run copies it to 8 nodes:
about 3 minutes more). Needs root, iproute2, nsenter, dockerd, sshd, ssh-keygen, iptables (exit 2
otherwise) and about 1.1 GB of disk per node under --cache.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.docker.lan import Lan, missing_tools  # noqa: E402

LAN_NAME = "fglb"
SUBNET = "10.79.0"
DEFAULT_IMAGE = "fgl-test/torchrun:bookworm"
DEFAULT_CACHE = "~/.cache/forgather-tests/lan-bench"
WORKSPACE = "/tmp"
WORKLOAD = ["sh", "-c", "echo RANK-RUNNING $RANK $WORLD_SIZE"]
MARKER = re.compile(r"RANK-RUNNING (\d+) (\d+)")
POLL_S = 0.02
GOAL_OVERHEAD_S = 2.0
FLAT_S = 0.5
INSTRUMENT_MARK = "FGLB-T "

# `python -c` wrapper around the fgl CLI: the same `fgl up`, with a timestamp line on stderr at the
# end of Python's start, after the imports, around connect_all, gather (pre-flight), each probe
# container and _start_all (create + start of every container), and after each failed create+start.
INSTRUMENT = r"""
import sys, time
def mark(what):
    sys.stderr.write(f"FGLB-T {what} {time.time():.6f}\n")
    sys.stderr.flush()
mark("python")
import fgl.cli, fgl.launch, fgl.preflight
mark("imported")
def timed(module, name, label):
    original = getattr(module, name)
    def wrapper(*args, **kwargs):
        mark(label + "+")
        try:
            return original(*args, **kwargs)
        finally:
            mark(label + "-")
    setattr(module, name, wrapper)
timed(fgl.launch, "connect_all", "connect")
timed(fgl.launch, "gather", "preflight")
timed(fgl.preflight, "run_probe_container", "probe")
timed(fgl.launch, "_start_all", "start")
create_and_start = fgl.launch.create_and_start
def refused(client, kwargs):
    try:
        return create_and_start(client, kwargs)
    except BaseException:
        mark("refused-")
        raise
fgl.launch.create_and_start = refused
sys.argv[0] = "fgl"
fgl.cli.main()
"""


class BenchError(RuntimeError):
    """A launch failed or did not behave (the message holds its output)."""


@dataclass
class Launch:
    """One timed launch: seconds from t0 to every rank running, to the end, and phase marks."""

    running: float
    wall: float
    t0_wall: float
    run_id: str
    phases: dict[str, float] = field(default_factory=dict)
    torchrun: list[list[str]] | None = None
    started: float | None = None  # t0 to the last container's engine "start" event


def markers(text: str) -> list[tuple[int, int]]:
    """(rank, world size) of every marker line in ``text``."""
    return [(int(m.group(1)), int(m.group(2))) for m in MARKER.finditer(text)]


def check_ranks(found: list[list[tuple[int, int]]], n: int, what: str) -> None:
    """Every node printed exactly one marker, the world size is ``n`` and the ranks are 0..n-1."""
    flat = [m for node in found for m in node]
    if any(len(node) != 1 for node in found) or sorted(flat) != [(r, n) for r in range(n)]:
        raise BenchError(f"{what}: unexpected marker lines per node: {found}")


class StartEvents:
    """Every container ``start`` on every node, from each engine's event stream (its local socket)."""

    def __init__(self, lan: Lan):
        self._lock = threading.Lock()
        self._starts: list[tuple[float, dict[str, str]]] = []
        self._clients = [node.client() for node in lan.nodes]
        self._streams = []
        for client in self._clients:
            stream = client.events(decode=True, filters={"type": "container", "event": "start"})
            self._streams.append(stream)  # subscribed once events() returns
            threading.Thread(target=self._follow, args=(stream,), daemon=True).start()

    def _follow(self, stream) -> None:
        with contextlib.suppress(Exception):  # closing the stream ends the loop
            for event in stream:
                attrs = event.get("Actor", {}).get("Attributes", {})
                with self._lock:
                    self._starts.append((event["timeNano"] / 1e9, attrs))

    def last_start(self, run_id: str, n: int, wait: float = 5.0) -> float | None:
        """When the last of the ``n`` train containers of ``run_id`` started (epoch seconds)."""
        deadline = time.monotonic() + wait
        while True:
            with self._lock:
                times = [
                    t
                    for t, attrs in self._starts
                    if attrs.get("fgl.run") == run_id and attrs.get("fgl.role") == "train"
                ]
            if len(times) >= n or time.monotonic() > deadline:
                return max(times) if len(times) >= n else None
            time.sleep(0.05)

    def close(self) -> None:
        for stream in self._streams:
            with contextlib.suppress(Exception):
                stream.close()
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.close()


class Bench:
    def __init__(
        self, lan: Lan, image: str, home: Path, tmp: Path, timeout: float, memlock: str | None
    ):
        self.lan = lan
        self.image = image
        self.memlock = memlock
        self.memlock_refused: bool | None = None
        self.tmp = tmp
        self.timeout = timeout
        self.key = str(lan.client_key)
        self.env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
        self.env.update(HOME=str(home), PYTHONUNBUFFERED="1")
        self.events = StartEvents(lan)
        self._count = 0

    def nodes_arg(self, n: int) -> list[str]:
        nodes = ",".join(node.spec for node in self.lan.nodes[:n])
        return ["--nodes", nodes, "--ssh-key", self.key]

    def fresh_dir(self, prefix: str) -> Path:
        self._count += 1
        path = self.tmp / f"{prefix}{self._count:03d}"
        path.mkdir()
        return path

    # ---------------------------------------------------------------- image

    def sync_image(self, n: int) -> tuple[float, str]:
        """``fgl sync-image`` to the first ``n`` nodes; (seconds, its table)."""
        env = {**self.env, "FGL_RUNS_DIR": str(self.fresh_dir("runs-"))}
        t0 = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "fgl.cli", "sync-image", self.image, *self.nodes_arg(n)],
            env=env,
            capture_output=True,
            text=True,
            timeout=3600,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
        )
        took = time.monotonic() - t0
        if done.returncode != 0:
            raise BenchError(
                f"fgl sync-image exited {done.returncode}:\n{done.stdout}{done.stderr}"
            )
        return took, done.stdout

    # ---------------------------------------------------------------- fgl up

    def fgl_up(self, n: int, instrument: bool = False) -> Launch:
        """One ``fgl up`` of the workload on the first ``n`` nodes."""
        runs = self.fresh_dir("runs-")
        env = {**self.env, "FGL_RUNS_DIR": str(runs)}
        entry = ["-c", INSTRUMENT] if instrument else ["-m", "fgl.cli"]
        args = [sys.executable, *entry, "up", *self.nodes_arg(n), "--image", self.image]
        if self.memlock:
            args += ["--memlock", self.memlock]
        args += ["--workspace", WORKSPACE, "--", *WORKLOAD]
        seen: set[int] = set()
        running = None
        with open(runs.with_suffix(".out"), "w+") as out:
            t0_wall = time.time()
            t0 = time.monotonic()
            proc = subprocess.Popen(
                args,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
            )
            try:
                while True:
                    code = proc.poll()
                    now = time.monotonic()
                    if running is None:
                        for log in runs.glob("*/node-*.log"):
                            rank = int(log.stem.split("-")[1])
                            if rank not in seen and MARKER.search(log.read_text()):
                                seen.add(rank)
                        if len(seen) == n:
                            running = now - t0
                    if code is not None:
                        break
                    if now - t0 > self.timeout:
                        raise BenchError(
                            f"fgl up on {n} nodes still running after {self.timeout:g} s"
                        )
                    time.sleep(POLL_S)
                wall = time.monotonic() - t0
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)  # fgl removes its containers on SIGTERM
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
            out.seek(0)
            output = out.read()
        if code != 0:
            raise BenchError(f"fgl up on {n} nodes exited {code}:\n{output[-6000:]}")
        (run,) = [p for p in runs.iterdir() if p.is_dir()]
        logs = [(run / f"node-{i}.log").read_text() for i in range(n)]
        check_ranks([markers(log) for log in logs], n, f"fgl up {run.name}")
        if running is None:  # every marker arrived between the last poll and the exit
            running = wall
        record = json.loads((run / "run.json").read_text())
        launch = Launch(running, wall, t0_wall, run.name)
        launch.torchrun = [node["torchrun"] for node in record["nodes"]]
        self._started(launch, n)
        if instrument:
            launch.phases = instrumented_phases(output, t0_wall, launch)
        return launch

    def _started(self, launch: Launch, n: int) -> None:
        last = self.events.last_start(launch.run_id, n)
        launch.started = None if last is None else last - launch.t0_wall

    # ---------------------------------------------------------------- by hand

    def plan(self, n: int) -> Planner:
        """fgl's own pre-flight and settings for the first ``n`` nodes (untimed, once per size)."""
        from fgl.engine import connect_all
        from fgl.inventory import parse_node_list, resolve_nodes
        from fgl.launch import preflight_problems, settings_from
        from fgl.preflight import gather
        from fgl.rendezvous import new_run_id

        nodes_text = ",".join(node.spec for node in self.lan.nodes[:n])
        specs = resolve_nodes(parse_node_list(nodes_text), "~/.ssh/config", self.key)
        nodes = connect_all(specs)
        try:
            pf = gather(nodes, self.image, run_id=new_run_id())
            preflight_problems(pf)
            if self.memlock_refused is None:
                self.memlock_refused = refuses_memlock(nodes[0].client, self.image)
        finally:
            for node in nodes:
                node.close()
        settings = settings_from(
            None,
            image=self.image,
            env={},
            env_file=None,
            workspace=WORKSPACE,
            memlock=self.memlock,
            cwd=str(REPO),
        )
        return Planner(nodes, pf, settings, drop_memlock=bool(self.memlock_refused))

    def by_hand(self, n: int, planner: Planner) -> Launch:
        """The same containers, created and started by a plain Docker SDK script over SSH."""
        run_id, kwargs_list, torchrun = planner.kwargs()
        addresses = [node.address for node in self.lan.nodes[:n]]
        records = [HandNode() for _ in range(n)]
        threads = [
            threading.Thread(target=hand_node, args=(addr, kw, rec), daemon=True)
            for addr, kw, rec in zip(addresses, kwargs_list, records, strict=True)
        ]
        running = None
        t0_wall = time.time()
        t0 = time.monotonic()
        for t in threads:
            t.start()
        while True:
            now = time.monotonic()
            errors = [rec.error for rec in records if rec.error]
            if errors:
                for t in threads:
                    t.join(30)
                raise BenchError(f"by hand on {n} nodes: {errors[0]!r}")
            if running is None and all(rec.running for rec in records):
                running = now - t0
            if not any(t.is_alive() for t in threads):
                break
            if now - t0 > self.timeout:
                raise BenchError(f"by hand on {n} nodes still running after {self.timeout:g} s")
            time.sleep(POLL_S)
        wall = time.monotonic() - t0
        if running is None:
            running = wall
        codes = [rec.code for rec in records]
        if codes != [0] * n:
            logs = [rec.log for rec in records]
            raise BenchError(f"by hand on {n} nodes: exit codes {codes}; logs: {logs}")
        check_ranks([markers(rec.log) for rec in records], n, f"by hand {run_id}")
        launch = Launch(running, wall, t0_wall, run_id, torchrun=torchrun)
        launch.phases = {  # when the last node got there
            "connected": max(rec.connected for rec in records) - t0,
            "started": max(rec.started for rec in records) - t0,
            "running": running,
            "wall": wall,
        }
        self._started(launch, n)
        return launch

    def leftovers(self) -> list[str]:
        """Containers of any state on any node, from each node's engine (its local socket)."""
        found = []
        for node in self.lan.nodes:
            names = node.docker("ps", "-a", "--format", "{{.Names}}", check=False).stdout.split()
            found += [f"{node.netns}:{name}" for name in names]
        return found


class Planner:
    """Container kwargs exactly as ``fgl up`` builds them, with a fresh run id each time."""

    def __init__(self, nodes, pf, settings, drop_memlock: bool = False):
        self.nodes, self.pf, self.settings = nodes, pf, settings
        self.drop_memlock = drop_memlock

    def kwargs(self) -> tuple[str, list[dict[str, Any]], list[list[str]]]:
        """(run id, every node's ``containers.create`` kwargs, every node's torchrun flags)."""
        from fgl.containers import container_kwargs, without_memlock
        from fgl.launch import container_spec, make_plan
        from fgl.rendezvous import new_run_id

        run_id = new_run_id()
        plan = make_plan(self.nodes, self.pf, self.settings, run_id)
        kwargs_list = [
            container_kwargs(
                container_spec(
                    self.settings,
                    run_id,
                    p.rank,
                    p.name,
                    plan.nnodes,
                    p.command(WORKLOAD),
                    f.gpus,
                    extra_env={**p.env, "FORGATHER_IMAGE_DIGEST": self.pf.image_id or ""},
                )
            )
            for p, f in zip(plan.nodes, self.pf.facts, strict=True)
        ]
        if self.drop_memlock:
            kwargs_list = [without_memlock(kw) for kw in kwargs_list]
        return run_id, kwargs_list, [list(p.torchrun_args) for p in plan.nodes]


def refuses_memlock(client: Any, image: str) -> bool:
    """Whether an engine refuses to start a container with the memlock=-1 ulimit (untimed)."""
    from docker.types import Ulimit
    from fgl.containers import is_memlock_refusal

    container = client.containers.create(
        image=image,
        command=["true"],
        ulimits=[Ulimit(name="memlock", soft=-1, hard=-1)],
        labels={"fgl.run": "fglb-memlock-check"},
    )
    try:
        container.start()
        container.wait()
        return False
    except Exception as exc:
        if is_memlock_refusal(exc):
            return True
        raise
    finally:
        with contextlib.suppress(Exception):
            container.remove(force=True)


@dataclass
class HandNode:
    """What one node's thread of the by-hand script saw (monotonic times)."""

    connected: float = 0.0
    started: float = 0.0
    running: float = 0.0
    code: int | None = None
    log: str = ""
    error: BaseException | None = None


def hand_node(address: str, kwargs: dict[str, Any], rec: HandNode) -> None:
    """One node of the by-hand script: connect, create, start, follow the log, wait, remove."""
    import docker

    container = None
    client = None
    try:
        client = docker.DockerClient(base_url=f"ssh://root@{address}", use_ssh_client=False)
        rec.connected = time.monotonic()
        container = client.containers.create(**kwargs)
        container.start()
        rec.started = time.monotonic()
        pending = b""
        for chunk in container.logs(stream=True, follow=True):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                text = line.decode("utf-8", "replace")
                rec.log += text + "\n"
                if not rec.running and MARKER.search(text):
                    rec.running = time.monotonic()
        rec.log += pending.decode("utf-8", "replace")
        rec.code = int(container.wait().get("StatusCode", -1))
        container.remove(force=True)
        container = None
    except BaseException as exc:
        rec.error = exc
    finally:
        if container is not None:
            with contextlib.suppress(Exception):
                container.remove(force=True)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()


def instrumented_phases(output: str, t0_wall: float, launch: Launch) -> dict[str, float]:
    """Seconds since t0 of the wrapper's marks (the first of each ``+``, the last of each ``-``)."""
    marks: dict[str, float] = {}
    for line in output.splitlines():
        if line.startswith(INSTRUMENT_MARK):
            label, stamp = line[len(INSTRUMENT_MARK) :].split()
            at = float(stamp) - t0_wall
            pick = min if label.endswith("+") else max
            marks[label] = pick(marks.get(label, at), at)
    marks["running"] = launch.running
    marks["wall"] = launch.wall
    marks["create+"] = marks.get("refused-", marks.get("start+", 0.0))
    return marks


# ---------------------------------------------------------------- report


def fmt(x: float | None, width: int = 7) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.2f}"


def med(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def paired(fgl: list[Launch], hand: list[Launch], what: str) -> list[float]:
    """fgl - by hand of ``what`` (an attribute) per round, for the rounds that have both."""
    pairs = [(getattr(a, what), getattr(b, what)) for a, b in zip(fgl, hand, strict=True)]
    return [a - b for a, b in pairs if a is not None and b is not None]


def results_table(sizes: list[int], fgl: dict[int, list[Launch]], hand: dict[int, list[Launch]]):
    """The headline table; returns {n: median paired overhead to every rank running}."""
    print(
        f"{'nodes':>5}  {'fgl up -> all ranks running':>27}  {'by hand -> all running':>22}  "
        f"{'overhead':>8}  {'ratio':>5}  {'fgl up wall':>11}  {'by-hand wall':>12}  "
        f"{'wall overhead':>13}  per-round overhead"
    )
    overheads = {}
    for n in sizes:
        f, h = fgl[n], hand[n]
        diffs = paired(f, h, "running")
        overheads[n] = statistics.median(diffs)
        f_run, h_run = med(a.running for a in f), med(b.running for b in h)
        print(
            f"{n:>5}  {f_run:>27.2f}  {h_run:>22.2f}  {overheads[n]:>+8.2f}  {f_run / h_run:>5.2f}  "
            f"{med(a.wall for a in f):>11.2f}  {med(b.wall for b in h):>12.2f}  "
            f"{statistics.median(paired(f, h, 'wall')):>+13.2f}  "
            + " ".join(f"{d:+.2f}" for d in diffs)
        )
    return overheads


def started_table(sizes: list[int], fgl: dict[int, list[Launch]], hand: dict[int, list[Launch]]):
    """To every container started (engine events); returns {n: median paired overhead}."""
    print(
        f"{'nodes':>5}  {'fgl up -> all started':>21}  {'by hand -> all started':>22}  "
        f"{'overhead':>8}  {'started -> running: fgl':>23}  {'by hand':>7}  per-round overhead"
    )
    overheads = {}
    for n in sizes:
        f, h = fgl[n], hand[n]
        diffs = paired(f, h, "started")
        if not diffs:
            print(f"{n:>5}  (no engine start events seen)")
            continue
        overheads[n] = statistics.median(diffs)
        f_rest = med(a.running - a.started for a in f if a.started is not None)
        h_rest = med(b.running - b.started for b in h if b.started is not None)
        print(
            f"{n:>5}  {fmt(med(a.started for a in f), 21)}  {fmt(med(b.started for b in h), 22)}  "
            f"{overheads[n]:>+8.2f}  {fmt(f_rest, 23)}  {fmt(h_rest, 7)}  "
            + " ".join(f"{d:+.2f}" for d in diffs)
        )
    return overheads


def goal_lines(overheads: dict[int, float], what: str) -> None:
    if not overheads:
        return
    sizes = sorted(overheads)
    worst = max(sizes, key=lambda n: overheads[n])
    ok = overheads[worst] <= GOAL_OVERHEAD_S
    print(
        f"goal, {what}: overhead <= {GOAL_OVERHEAD_S:g} s at every node count: "
        f"{'OK' if ok else 'MISSED'} (largest {overheads[worst]:+.2f} s at {worst} nodes)"
    )
    growth = overheads[sizes[-1]] - overheads[sizes[0]]
    verdict = "OK" if abs(growth) <= FLAT_S else "NOT FLAT"
    print(
        f"goal, {what}: flat in the node count: overhead at {sizes[-1]} nodes - at {sizes[0]} = "
        f"{growth:+.2f} s: {verdict} (flat: within +-{FLAT_S:g} s)"
    )


def breakdown_table(sizes: list[int], inst: dict[int, Launch], hand: dict[int, list[Launch]]):
    """Where the time goes: the instrumented fgl up's phases, the by-hand script's (medians)."""

    def span(p: dict[str, float], start: str, end: str) -> float | None:
        if start == "t0":
            return p.get(end)
        if start in p and end in p:
            return p[end] - p[start]
        return None

    fgl_rows = [
        ("python start (interpreter, site)", "t0", "python"),
        ("import fgl.cli, fgl.launch (docker, paramiko)", "python", "imported"),
        ("CLI parsing, node specs, settings", "imported", "connect+"),
        ("connect_all (SSH handshakes, engine version)", "connect+", "connect-"),
        ("pre-flight: info, image id, probe on each host", "preflight+", "preflight-"),
        ("  of which probe containers (fallback only)", "probe+", "probe-"),
        ("plan, run.json, until the first create", "preflight-", "start+"),
        ("create + start refused (memlock=-1), removed", "start+", "refused-"),
        ("create + start every container", "create+", "start-"),
        ("started -> every rank running", "start-", "running"),
        ("= to every rank running", "t0", "running"),
        ("every rank running -> exit (teardown)", "running", "wall"),
    ]
    hand_rows = [
        ("connect (SSH handshake, engine version)", "t0", "connected"),
        ("create + start", "connected", "started"),
        ("started -> every rank running", "started", "running"),
        ("= to every rank running", "t0", "running"),
        ("every rank running -> exit (wait, remove)", "running", "wall"),
    ]
    width = 50
    print(f"{'where the time goes (s)':<{width}}" + "".join(f"{f'{n} nodes':>9}" for n in sizes))
    print("fgl up (one run with timestamps per node count)")
    for label, start, end in fgl_rows:
        cells = "".join(fmt(span(inst[n].phases, start, end), 9) for n in sizes)
        print(f"  {label:<{width - 2}}{cells}")
    print("by hand (median over the rounds; the last node to get there)")
    for label, start, end in hand_rows:
        cells = "".join(fmt(med(span(h.phases, start, end) for h in hand[n]), 9) for n in sizes)
        print(f"  {label:<{width - 2}}{cells}")


def machine_facts() -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs, load average {load}"


def same_flags(f: Launch, h: Launch) -> None:
    """The by-hand containers got the torchrun flags fgl gave its own (run id aside)."""
    mine = [[f.run_id if a == h.run_id else a for a in args] for args in h.torchrun or []]
    if mine != f.torchrun:
        raise BenchError(f"by-hand torchrun flags differ from fgl's:\n{mine}\n{f.torchrun}")


# ---------------------------------------------------------------- main


def run_all(bench: Bench, sizes: list[int], opts: argparse.Namespace) -> None:
    count = sizes[-1]
    planners = {count: bench.plan(count)}
    if bench.memlock_refused:
        how = {
            None: "fgl up (memlock auto) is refused once (in the warm-up), remembers it per "
            "engine and starts without it from then on; the by-hand script starts without it",
            "auto": "fgl up --memlock auto is refused once (in the warm-up), remembers it per "
            "engine and starts without it from then on; the by-hand script starts without it",
            "off": "fgl up --memlock off and the by-hand script start without it",
            "on": "fgl up --memlock on will fail",
        }[opts.memlock]
        print(f"the nodes' engines refuse the memlock=-1 ulimit: {how}", flush=True)
    for _ in range(opts.warmup):
        a = bench.fgl_up(count)
        b = bench.by_hand(count, planners[count])
        print(
            f"warm-up on {count} nodes (untimed): to every rank running fgl up {a.running:.2f} s, "
            f"by hand {b.running:.2f} s",
            flush=True,
        )
    fgl: dict[int, list[Launch]] = {}
    hand: dict[int, list[Launch]] = {}
    inst: dict[int, Launch] = {}
    for n in sizes:
        planner = planners.get(n) or bench.plan(n)
        fgl[n], hand[n] = [], []
        for r in range(opts.rounds):
            for way in ("fgl", "hand") if r % 2 == 0 else ("hand", "fgl"):
                if way == "fgl":
                    fgl[n].append(bench.fgl_up(n))
                else:
                    hand[n].append(bench.by_hand(n, planner))
            f, h = fgl[n][-1], hand[n][-1]
            print(
                f"{n} nodes, round {r + 1}: fgl up / by hand: started {fmt(f.started, 0)} / "
                f"{fmt(h.started, 0)} s, every rank running {f.running:.2f} / {h.running:.2f} s, "
                f"wall {f.wall:.2f} / {h.wall:.2f} s; load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
        same_flags(fgl[n][0], hand[n][0])
        if not opts.no_breakdown:
            inst[n] = bench.fgl_up(n, instrument=True)
    print()
    print(
        f"machine: {machine_facts()}; {opts.rounds} rounds per node count, medians (s), "
        "overhead = median of the paired differences fgl up - by hand"
    )
    print("to every rank running (the issue's measure):")
    overheads = results_table(sizes, fgl, hand)
    print("\nto every container started (engine start events; before any torch import):")
    started = started_table(sizes, fgl, hand)
    print()
    goal_lines(overheads, "to every rank running")
    goal_lines(started, "to every container started")
    print(
        "absolute times grow with the node count because every node's torchrun imports torch on "
        f"this machine's {os.cpu_count()} CPUs (CPU contention, both ways alike): the overhead "
        "columns are what measure fgl, and the one to every container started has the least noise"
    )
    if inst:
        print()
        breakdown_table(sizes, inst, hand)


def remove_lan_data(root: Path, lan_name: str) -> None:
    """Delete the nodes' engine data and the LAN's keys under ``root`` (only what the LAN wrote)."""
    for path in root.glob(f"{lan_name}n*"):
        if path.is_dir() and path.name[len(lan_name) + 1 :].isdigit():
            shutil.rmtree(path, ignore_errors=True)
    for name in ("client_key", "client_key.pub"):
        with contextlib.suppress(FileNotFoundError):
            (root / name).unlink()
    with contextlib.suppress(OSError):
        root.rmdir()


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of node counts: {text!r}") from None
    if not sizes or sizes[0] < 1 or sizes[-1] > 64:
        raise argparse.ArgumentTypeError("node counts must be between 1 and 64")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--nodes", type=parse_sizes, default=[1, 2, 4, 8], help="node counts (default 1,2,4,8)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each way per node count")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed rounds of each way on every node first"
    )
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="image on this machine's engine")
    parser.add_argument(
        "--cache", default=DEFAULT_CACHE, help="the nodes' engine data (outside the repo)"
    )
    parser.add_argument(
        "--clean",
        action="store_true",
        help="delete the nodes' engine data (images) at the end (default: keep it for the next run)",
    )
    parser.add_argument(
        "--memlock",
        choices=("auto", "on", "off"),
        default=None,
        help="pass --memlock to fgl up (default: none, fgl's default auto)",
    )
    parser.add_argument(
        "--no-breakdown", action="store_true", help="skip the fgl up with timestamps per size"
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed per launch")
    opts = parser.parse_args()
    if opts.rounds < 1 or opts.warmup < 0:
        parser.error("--rounds must be >= 1 and --warmup >= 0")
    missing = missing_tools()
    if missing:
        print(f"a simulated LAN needs: {', '.join(missing)}", file=sys.stderr)
        sys.exit(2)
    root = Path(opts.cache).expanduser().resolve()
    if root == REPO or REPO in root.parents:
        parser.error(f"--cache must be outside the repository ({REPO})")

    sizes = opts.nodes
    count = sizes[-1]
    tmp = Path(tempfile.mkdtemp(prefix="fglb-bench-"))
    home = tmp / "home"
    wall_start = time.monotonic()
    print(f"machine: {machine_facts()}", flush=True)
    try:
        t0 = time.monotonic()
        with Lan(count, root, name=LAN_NAME, subnet=SUBNET) as lan:
            print(
                f"LAN: {count} nodes ({lan.nodes[0].address}..{lan.nodes[-1].address}) up in "
                f"{time.monotonic() - t0:.1f} s; engine data in {root}",
                flush=True,
            )
            lan.trust(home)
            (home / ".ssh" / "config").write_text(
                f"Host {SUBNET}.*\n    User root\n    IdentityFile {lan.client_key}\n"
            )
            # The by-hand script's Docker SDK (paramiko) reads ~/.ssh/config and known_hosts.
            os.environ["HOME"] = str(home)
            bench = Bench(lan, opts.image, home, tmp, opts.timeout, opts.memlock)
            try:
                took, table = bench.sync_image(count)
                print(f"fgl sync-image {opts.image} to {count} nodes: {took:.1f} s", flush=True)
                print("  " + table.rstrip().replace("\n", "\n  "), flush=True)
                run_all(bench, sizes, opts)
                left = bench.leftovers()
                print(f"containers left on the nodes' engines: {', '.join(left) or 'none'}")
            finally:
                bench.events.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if opts.clean:
            remove_lan_data(root, LAN_NAME)
    kept = "deleted (--clean)" if opts.clean else f"kept in {root} (--clean deletes it)"
    print(f"the nodes' engine data {kept}; total wall time {time.monotonic() - wall_start:.0f} s")


if __name__ == "__main__":
    main()
