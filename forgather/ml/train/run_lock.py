"""One training run per output directory: an advisory lock held for the whole run.

`<output_dir>/.forgather-run.lock` is locked with `flock` (the kernel releases it when the process
ends, even by `kill -9`; NFS v4 carries it across clients) and holds who has it: pid, host, boot id
and start time, so a second run is refused with one line saying which run is in the way. The file
is removed when the run releases it (a run that fails at its start leaves its output dir as it
was); a holder checks that the file it locked is still the one at the path.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from forgather.errors import ForgatherError

LOCK_FILE = ".forgather-run.lock"


class OutputDirInUse(ForgatherError):
    """Another run holds the output directory."""


def boot_id() -> str:
    """This machine's boot id (a pid means something only within one boot of one host)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def machine_key() -> str:
    """12 hex digits naming this machine in this boot: its host name (a container's is its own) and
    its boot id. A pid in a temp name is meaningful only where the key matches: on another host, in
    another container of this host (pids repeat across containers), or before a reboot it names
    some other process, or none."""
    digest = hashlib.sha256(f"{socket.gethostname()}\0{boot_id()}".encode())
    return digest.hexdigest()[:12]


def holder_description(data: dict[str, Any]) -> str:
    return (
        f"pid {data.get('pid', '?')} on host {data.get('host', '?')} since "
        f"{data.get('started', '?')}"
    )


class RunLock:
    """The lock of one output directory; `acquire()` raises OutputDirInUse naming the holder."""

    def __init__(self, output_dir: str | os.PathLike):
        self.path = Path(output_dir) / LOCK_FILE
        self._handle: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def acquire(self) -> str | None:
        """Take the lock; returns a warning when the filesystem cannot lock (the run goes on)."""
        if self._handle is not None:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            handle, warning = self._try_lock()
            if handle is None:
                return warning
            try:
                current = os.stat(self.path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(handle.fileno()).st_ino:
                break
            handle.close()  # released and removed by its holder meanwhile: lock the new file
        else:
            return f"cannot lock {self.path}: it keeps being replaced"
        handle.seek(0)
        handle.truncate()
        handle.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "boot_id": boot_id(),
                    "started": datetime.now(UTC).isoformat(timespec="seconds"),
                }
            )
        )
        handle.flush()
        self._handle = handle
        return None

    def _try_lock(self) -> tuple[IO[str] | None, str | None]:
        """(the locked file, None), or (None, a warning) when the filesystem cannot lock."""
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the run
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            try:
                holder = holder_description(json.loads(handle.read() or "{}"))
            except ValueError:
                holder = "another process"
            handle.close()
            raise OutputDirInUse(
                f"{self.path.parent} is in use by {holder} (another training run writes its "
                "checkpoints there): wait for it to end, stop it, or give this run another "
                "output_dir"
            ) from None
        except OSError as error:  # e.g. ENOLCK: a filesystem without locks
            handle.close()
            return None, (
                f"cannot lock {self.path} ({error.strerror}); two runs could share this output_dir"
            )
        return handle, None

    def release(self) -> None:
        if self._handle is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still locked: a waiting run then locks a new file
        with contextlib.suppress(OSError):
            fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None


__all__ = ["LOCK_FILE", "OutputDirInUse", "RunLock", "boot_id", "machine_key"]
