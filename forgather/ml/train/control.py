"""Trainer control: a small HTTP endpoint in the training process, its discovery files and a client.

The training process (rank 0) runs `ControlServer`: a stdlib HTTP server in a daemon thread, bound to
127.0.0.1 unless told otherwise, that accepts requests carrying the job's random bearer token:

* `GET /status` -> JSON: job info plus what the trainer reports (step, max steps, last loss, ...).
* `POST /command` with `{"command": "save" | "stop" | "save-stop" | "abort"}` -> 202; the command
  goes into a thread-safe mailbox that the trainer drains (see TrainerControlCallback).

Requests without the token get 401. The server writes a discovery file
`<jobs dir>/<job_id>.json` (job_id, host, port, token, pid, output_dir, started; mode 0600) and removes
it when stopped. The jobs dir is `$FORGATHER_JOBS_DIR`, else `<user runtime dir>/forgather/jobs`,
else `<user cache dir>/forgather/jobs`. This module does not import torch.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import json
import os
import queue
import re
import secrets
import socket
import threading
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from forgather.errors import ForgatherError

COMMANDS = ("save", "stop", "save-stop", "abort")
JOBS_DIR_ENV = "FORGATHER_JOBS_DIR"
MAX_BODY = 64 * 1024
MAX_CONNECTIONS = 32  # open connections (threads) at once; a new one closes the oldest
REQUEST_TIMEOUT = 5.0  # seconds a connection may stay silent


class ControlError(ForgatherError):
    """A control request that failed: unknown or dead job, refused connection, rejected command."""


@dataclass
class JobInfo:
    """What the discovery file says about a running job."""

    job_id: str
    host: str
    port: int
    token: str
    pid: int
    output_dir: str | None = None
    started: str = ""

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def public(self) -> dict[str, Any]:
        """The job info without the token."""
        data = asdict(self)
        data.pop("token")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobInfo:
        return cls(
            job_id=str(data["job_id"]),
            host=str(data["host"]),
            port=int(data["port"]),
            token=str(data["token"]),
            pid=int(data["pid"]),
            output_dir=data.get("output_dir"),
            started=str(data.get("started") or ""),
        )


# ---- discovery files --------------------------------------------------------------------------


def jobs_dir() -> Path:
    """Where discovery files live (see the module docs); created with mode 0700 when written."""
    override = os.environ.get(JOBS_DIR_ENV)
    if override:
        return Path(override)
    import platformdirs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        try:
            runtime = platformdirs.user_runtime_dir("forgather")
        except Exception:
            runtime = None
    if runtime:
        return Path(runtime) / "jobs"
    return Path(platformdirs.user_cache_dir("forgather")) / "jobs"


def _ensure_dir(directory: Path) -> Path:
    """The jobs directory, created 0700; refused when another user owns it or others can enter it
    (it holds the jobs' bearer tokens)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = directory.stat()
    if info.st_uid != os.getuid():
        raise ControlError(
            f"jobs directory {directory} is owned by uid {info.st_uid}, not by you "
            f"(uid {os.getuid()}): set {JOBS_DIR_ENV} to a directory of your own"
        )
    if info.st_mode & 0o077:
        raise ControlError(
            f"jobs directory {directory} has mode {info.st_mode & 0o777:04o}: others could read "
            f"the jobs' tokens; chmod 700 {directory}"
        )
    return directory


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this host)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except OSError as error:
        return error.errno != errno.ESRCH
    return True


def new_job_id(output_dir: str | os.PathLike | None = None) -> str:
    """`<output dir name>-<6 hex>`, e.g. `tiny_llama-3fa9c2` (`job-...` without an output dir)."""
    name = Path(output_dir).name if output_dir else ""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-")[:40] or "job"
    return f"{name}-{secrets.token_hex(3)}"


def write_job_file(info: JobInfo, directory: Path | None = None) -> Path:
    """Write the discovery file atomically, readable by the owner only (0600)."""
    directory = _ensure_dir(directory or jobs_dir())
    path = directory / f"{info.job_id}.json"
    tmp = directory / f".{info.job_id}.json.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (json.dumps(asdict(info), indent=2) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def _read_job_files(directory: Path) -> list[tuple[Path, JobInfo]]:
    entries = []
    if not directory.is_dir():
        return entries
    for path in sorted(directory.glob("*.json")):
        try:
            entries.append((path, JobInfo.from_dict(json.loads(path.read_text()))))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # half-written or foreign file
    return entries


def list_jobs(prune: bool = True, directory: Path | None = None) -> list[JobInfo]:
    """Jobs whose process is alive, by start time; discovery files of dead ones are removed."""
    jobs = []
    for path, info in _read_job_files(directory or jobs_dir()):
        if pid_alive(info.pid):
            jobs.append(info)
        elif prune:
            with contextlib.suppress(OSError):
                path.unlink()
    return sorted(jobs, key=lambda j: (j.started, j.job_id))


def find_job(ref: str, directory: Path | None = None) -> JobInfo:
    """The running job whose id is `ref` or starts with it; ControlError if none, several or dead."""
    entries = _read_job_files(directory or jobs_dir())
    exact = [(p, j) for p, j in entries if j.job_id == ref]
    matches = exact or [(p, j) for p, j in entries if j.job_id.startswith(ref)]
    if not matches:
        raise ControlError(f"no job matches {ref!r} (see `forgather control list`)")
    alive = [(p, j) for p, j in matches if pid_alive(j.pid)]
    for path, info in matches:
        if (path, info) not in alive:
            with contextlib.suppress(OSError):
                path.unlink()
    if not alive:
        info = matches[0][1]
        raise ControlError(
            f"job {info.job_id} is not running (process {info.pid} is gone); "
            "its stale entry was removed"
        )
    if len(alive) > 1:
        names = ", ".join(j.job_id for _, j in alive)
        raise ControlError(f"{ref!r} matches several jobs: {names}; give more of the id")
    return alive[0][1]


# ---- server -----------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "forgather-control/1"
    timeout = REQUEST_TIMEOUT  # a client that sends nothing is dropped after this many seconds

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = (json.dumps(body, default=str) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if code == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="forgather"')
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        return hmac.compare_digest(token.strip().encode(), self.server.control.token.encode())

    def do_GET(self) -> None:
        if not self._authorized():
            self._reply(401, {"error": "unauthorized: missing or wrong bearer token"})
            return
        if self.path.rstrip("/") == "/status":
            self._reply(200, self.server.control.status())
        else:
            self._reply(404, {"error": f"no route GET {self.path}"})

    def do_POST(self) -> None:
        if not self._authorized():
            self._reply(401, {"error": "unauthorized: missing or wrong bearer token"})
            return
        if self.path.rstrip("/") != "/command":
            self._reply(404, {"error": f"no route POST {self.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self._reply(400, {"error": "bad Content-Length"})
            return
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            command = body.get("command") if isinstance(body, dict) else None
        except ValueError:
            command = None
        if command not in COMMANDS:
            self._reply(400, {"error": f"command must be one of {', '.join(COMMANDS)}"})
            return
        self.server.control.submit(command)
        self._reply(202, {"accepted": command, "job_id": self.server.control.job_id})


class _Server(ThreadingHTTPServer):
    """At most `MAX_CONNECTIONS` open connections (one thread each): a new one beyond them closes
    the oldest, so clients that open connections and send nothing cannot lock out a real command
    (which completes in milliseconds) nor pile up threads in the training process."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # the listen backlog: a burst of connects is accepted, not retried
    control: ControlServer

    def server_activate(self) -> None:
        super().server_activate()
        self._open: dict[Any, None] = {}  # oldest first
        self._open_lock = threading.Lock()

    def process_request(self, request, client_address) -> None:
        with self._open_lock:
            if len(self._open) >= MAX_CONNECTIONS:
                oldest = next(iter(self._open))
                del self._open[oldest]
                with contextlib.suppress(OSError):
                    oldest.shutdown(socket.SHUT_RDWR)  # its handler reads EOF and ends
            self._open[request] = None
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._open_lock:
            self._open.pop(request, None)
        super().shutdown_request(request)


class ControlServer:
    """The control endpoint of one job: HTTP server thread, mailbox and discovery file.

    `status_fn` returns the trainer's part of the status (global_step, max_steps, loss, ...).
    `start()` binds (port 0: any free port), starts the thread and writes the discovery file;
    `stop()` shuts it down and removes the file. Commands are read with `get_command()` (non-blocking).
    """

    def __init__(
        self,
        job_id: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        output_dir: str | os.PathLike | None = None,
        status_fn: Callable[[], dict[str, Any]] | None = None,
        directory: Path | None = None,
    ):
        self.job_id = job_id or new_job_id(output_dir)
        self.host = host
        self.requested_port = port
        self.output_dir = str(output_dir) if output_dir is not None else None
        self.status_fn = status_fn
        self.directory = directory
        self.token = secrets.token_urlsafe(32)
        self.mailbox: queue.Queue[str] = queue.Queue()
        self.info: JobInfo | None = None
        self.job_file: Path | None = None
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1] if self._httpd else self.requested_port

    def start(self) -> JobInfo:
        if self._httpd is not None:
            assert self.info is not None
            return self.info
        server_class = _Server
        if ":" in self.host:  # IPv6 literal
            server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
        self._httpd = server_class((self.host, self.requested_port), _Handler)
        self._httpd.control = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"forgather-control-{self.job_id}",
            daemon=True,
        )
        self._thread.start()
        self.info = JobInfo(
            job_id=self.job_id,
            host=self.host,
            port=self.port,
            token=self.token,
            pid=os.getpid(),
            output_dir=self.output_dir,
            started=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        self.job_file = write_job_file(self.info, self.directory)
        return self.info

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.job_file is not None:
            with contextlib.suppress(OSError):
                self.job_file.unlink()
            self.job_file = None

    def submit(self, command: str) -> None:
        if command not in COMMANDS:
            raise ValueError(f"unknown command {command!r}")
        self.mailbox.put(command)

    def get_command(self) -> str | None:
        try:
            return self.mailbox.get_nowait()
        except queue.Empty:
            return None

    def drain(self) -> list[str]:
        commands = []
        while (command := self.get_command()) is not None:
            commands.append(command)
        return commands

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = self.info.public() if self.info else {"job_id": self.job_id}
        data["pending_commands"] = self.mailbox.qsize()
        if self.status_fn is not None:
            try:
                data.update(self.status_fn())
            except Exception as error:  # status must not take the trainer down
                data["status_error"] = str(error)
        return data


# ---- client -----------------------------------------------------------------------------------


class ControlClient:
    """Talks to one job's control endpoint."""

    def __init__(self, info: JobInfo, timeout: float = 5.0):
        self.info = info
        self.timeout = timeout

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        import urllib.error
        import urllib.request

        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.info.url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.info.token}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            try:
                message = json.loads(error.read() or b"{}").get("error", "")
            except ValueError:
                message = ""
            raise ControlError(
                f"job {self.info.job_id}: HTTP {error.code} {message or error.reason}"
            ) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            if isinstance(reason, ConnectionRefusedError) or "refused" in str(reason).lower():
                raise ControlError(
                    f"job {self.info.job_id}: connection refused at {self.info.url} "
                    "(is the job still running?)"
                ) from None
            raise ControlError(
                f"job {self.info.job_id}: cannot reach {self.info.url}: {reason}"
            ) from None

    def status(self) -> dict[str, Any]:
        return self._request("GET", "/status")

    def send(self, command: str) -> dict[str, Any]:
        if command not in COMMANDS:
            raise ControlError(f"unknown command {command!r}; one of {', '.join(COMMANDS)}")
        return self._request("POST", "/command", {"command": command})
