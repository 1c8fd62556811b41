"""Runs: the run directory (what started where, logs, result) and the supervisor that starts every
container, streams the logs, waits, and tears everything down on the first failure or on Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from fgl.containers import is_memlock_refusal, without_memlock
from fgl.errors import FglError
from fgl.files import private_dir, private_file
from fgl.inventory import NodeSpec
from fgl.logs import LogSink, TorchrunReport
from fgl.output import warn

TEARDOWN_GRACE = 5.0
"""Seconds between SIGTERM and SIGKILL when a run is torn down (all nodes in parallel, < 10 s in all)."""

EXIT_LOST = 255
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


def runs_root() -> Path:
    """Where run directories live: ``$FGL_RUNS_DIR``, else ``$XDG_DATA_HOME/fgl/runs`` (~/.local/share/fgl/runs)."""
    if os.environ.get("FGL_RUNS_DIR"):
        return Path(os.environ["FGL_RUNS_DIR"]).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "fgl" / "runs"


class RunDir:
    """``<runs root>/<run id>/``: ``run.json`` (what started where), ``node-i.log``, ``result.json``."""

    def __init__(self, run_id: str, root: Path | None = None):
        self.run_id = run_id
        self.path = (root or runs_root()) / run_id

    def create(self) -> RunDir:
        """The run's directory, private to this user (0700, as is the runs root): its files
        name hosts, keys and commands, and ``fgl down`` acts on what ``run.json`` says."""
        private_dir(self.path.parent)
        private_dir(self.path)
        return self

    def exists(self) -> bool:
        return (self.path / "run.json").exists()

    def write_record(self, record: dict[str, Any]) -> None:
        _write_json(self.path / "run.json", record)

    def record(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / "run.json").read_text())
        except (OSError, ValueError):
            raise FglError(
                f"no run {self.run_id} in {self.path.parent} (fgl status lists runs; "
                "pass --nodes to act on the engines directly)"
            ) from None

    def write_result(self, exit_code: int, reason: str, failed_rank: int | None = None) -> None:
        _write_json(
            self.path / "result.json",
            {
                "exit_code": exit_code,
                "reason": reason,
                "failed_rank": failed_rank,
                "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )

    def result(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.path / "result.json").read_text())
        except (OSError, ValueError):
            return None

    def logs(self) -> list[Path]:
        return sorted(self.path.glob("node-*.log"), key=lambda p: int(p.stem.split("-")[1]))

    def node_specs(self) -> list[NodeSpec]:
        """The nodes recorded for this run, in rank order."""
        return [
            NodeSpec(**{**n["spec"], "keys": tuple(n["spec"].get("keys", ()))})
            for n in self.record()["nodes"]
        ]


def spec_record(spec: NodeSpec) -> dict[str, Any]:
    """A node spec as JSON-able data (run.json keeps it so ``fgl down RUN`` finds the nodes)."""
    data = asdict(spec)
    data["keys"] = list(spec.keys)
    return data


def list_runs(root: Path | None = None) -> list[RunDir]:
    """Every recorded run, newest first."""
    base = root or runs_root()
    if not base.is_dir():
        return []
    dirs = [RunDir(p.name, base) for p in base.iterdir() if (p / "run.json").exists()]
    return sorted(dirs, key=lambda r: r.run_id, reverse=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    with private_file(tmp) as handle:
        handle.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


# ---------------------------------------------------------------- exit codes and memlock


def aggregate_exit(events: Iterable[tuple[int, int]]) -> tuple[int, int | None]:
    """The run's exit code from ``(rank, code)`` in completion order: the first failure's code, else 0."""
    for rank, code in events:
        if code != 0:
            return code, rank
    return 0, None


def worker_exit_code(container_code: int, reported: int | None) -> int:
    """A node's exit code: torchrun's 1 is replaced by the failed worker's code from its report."""
    if container_code == 1 and reported:
        return reported
    return container_code


class MemlockFallback:
    """Starts containers with memlock=-1 and, in ``auto`` mode, retries without it once an engine refuses.

    ``on`` makes the refusal an error; ``off`` never asks for it. Nodes in ``remembered`` (engines that
    refused in an earlier run) start without it at once; ``on_refused(node)`` is called at a new
    refusal so it can be remembered. Warns once per run.
    """

    def __init__(
        self,
        mode: str = "auto",
        on_warn: Callable[[str], None] = warn,
        remembered: Iterable[str] = (),
        on_refused: Callable[[str], None] = lambda node: None,
    ):
        self.mode = mode
        self.refused: set[str] = set(remembered) if mode == "auto" else set()
        self._warned = False
        self._warn = on_warn
        self._on_refused = on_refused
        self._lock = threading.Lock()
        if self.refused:
            self._warned = True
            self._warn(
                f"{', '.join(sorted(self.refused))}: the engine refused the memlock=-1 ulimit in an "
                "earlier run; starting without it (RDMA/NCCL pinned memory may be limited; set "
                "memlock: off to silence)"
            )

    def kwargs_for(self, node: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The kwargs to try first on ``node``."""
        if self.mode == "off" or node in self.refused:
            return without_memlock(kwargs)
        return kwargs

    def start(
        self, node: str, kwargs: dict[str, Any], create_and_start: Callable[[dict[str, Any]], Any]
    ) -> Any:
        """``create_and_start(kwargs)``, retried without memlock when the engine refuses it (auto mode)."""
        first = self.kwargs_for(node, kwargs)
        try:
            return create_and_start(first)
        except Exception as exc:
            if not is_memlock_refusal(exc) or first is not kwargs:
                raise
            if self.mode == "on":
                raise FglError(
                    f"node {node}: the engine refuses --ulimit memlock=-1 ({exc}); "
                    "set memlock: auto or off in fgl.yaml (or --memlock auto)"
                ) from None
            with self._lock:
                self.refused.add(node)
                if not self._warned:
                    self._warned = True
                    self._warn(
                        f"node {node}: the engine refuses the memlock=-1 ulimit; starting without it "
                        "(RDMA/NCCL pinned memory may be limited; set memlock: off to silence)"
                    )
            self._on_refused(node)
        return create_and_start(without_memlock(kwargs))


def create_and_start(client: Any, kwargs: dict[str, Any]) -> Any:
    """Create and start a container; if starting fails, remove what was created."""
    container = client.containers.create(**kwargs)
    try:
        container.start()
    except BaseException:
        with contextlib.suppress(Exception):
            container.remove(force=True)
        raise
    return container


# ---------------------------------------------------------------- the supervisor


class ContainerLike(Protocol):
    name: str

    def wait(self) -> dict[str, Any]: ...
    def logs(self, **kwargs: Any) -> Iterable[bytes]: ...
    def stop(self, timeout: int = ...) -> None: ...
    def remove(self, force: bool = ...) -> None: ...


@dataclass
class Member:
    """One running container of a run."""

    rank: int
    node: str
    container: Any
    label: str = ""
    exit_code: int | None = None
    log_thread: threading.Thread | None = field(default=None, repr=False)
    report: TorchrunReport = field(default_factory=TorchrunReport, repr=False)

    def __post_init__(self) -> None:
        self.label = self.label or f"node-{self.rank}"


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived while the run was supervised."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Supervisor:
    """Streams every member's log, waits for all, and on the first failure or a signal stops the rest.

    ``remove(member)`` stops (SIGTERM, grace, SIGKILL) and removes one container; it is given so the
    same logic drives real engines and tests.
    """

    def __init__(
        self,
        members: list[Member],
        sink: LogSink | None,
        remove: Callable[[Member, float], None],
        grace: float = TEARDOWN_GRACE,
        on_event: Callable[[str], None] | None = None,
    ):
        self.members = members
        self.sink = sink
        self._remove = remove
        self.grace = grace
        self._events: queue.Queue[tuple[int, int, str]] = queue.Queue()
        self._on_event = on_event or (lambda msg: None)
        self.reason = "all nodes exited 0"

    def _follow(self, m: Member) -> None:
        if self.sink is None:
            return
        # A stream that breaks means the container went away; the wait thread reports how.
        with contextlib.suppress(Exception):
            self.sink.pump(
                m.label, m.rank, m.container.logs(stream=True, follow=True), m.report.feed
            )

    def _wait(self, m: Member) -> None:
        try:
            code = int(m.container.wait().get("StatusCode", EXIT_LOST))
            self._events.put((m.rank, code, ""))
        except Exception as exc:
            self._events.put((m.rank, EXIT_LOST, f"lost contact with {m.label} ({m.node}): {exc}"))

    def start_streams(self) -> None:
        for m in self.members:
            m.log_thread = threading.Thread(target=self._follow, args=(m,), daemon=True)
            m.log_thread.start()
            threading.Thread(target=self._wait, args=(m,), daemon=True).start()

    def supervise(self) -> tuple[int, int | None]:
        """Wait for the run; returns (exit code, rank that failed first or None). Always tears down."""
        self.start_streams()
        completed: list[tuple[int, int]] = []
        pending = {m.rank for m in self.members}
        by_rank = {m.rank: m for m in self.members}
        try:
            while pending:
                try:
                    rank, code, note = self._events.get(timeout=0.2)
                except queue.Empty:
                    continue
                pending.discard(rank)
                self._drain_log(by_rank[rank], timeout=0.5 if note else 5.0)
                code = worker_exit_code(code, by_rank[rank].report.exit_code)
                by_rank[rank].exit_code = code
                completed.append((rank, code))
                if code != 0:
                    m = by_rank[rank]
                    self.reason = note or f"{m.label} ({m.node}) exited {code}"
                    self._on_event(f"{self.reason}; stopping the run on every node")
                    break
        except KeyboardInterrupt:
            raise Interrupted(signal.SIGINT) from None
        finally:
            with signals_ignored():
                self.teardown()
        return aggregate_exit(completed)

    def _drain_log(self, m: Member, timeout: float = 5.0) -> None:
        if m.log_thread is not None:
            m.log_thread.join(timeout)

    def teardown(self) -> None:
        """Stop and remove every member's container, all in parallel; bounded by the grace period."""
        threads = [
            threading.Thread(target=self._remove_quietly, args=(m,), daemon=True)
            for m in self.members
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + self.grace + 4.0
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for m in self.members:
            self._drain_log(m, timeout=max(0.0, min(1.0, deadline - time.monotonic())))

    def _remove_quietly(self, m: Member) -> None:
        try:
            self._remove(m, self.grace)
        except Exception as exc:
            warn(f"could not remove {m.label} on {m.node}: {exc} (retry with fgl down)")


class signals_ignored:
    """Ignore SIGINT/SIGTERM while tearing down (a second Ctrl-C must not leave containers behind)."""

    def __enter__(self) -> None:
        self._saved = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, signal.SIG_IGN)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


def install_signal_handlers() -> Callable[[], None]:
    """Make SIGINT and SIGTERM raise Interrupted (even where SIGINT was ignored, as under ``cmd &``).

    Returns a function restoring the previous handlers. Only the main thread can install handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def on_signal(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    for sig in previous:
        signal.signal(sig, on_signal)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
