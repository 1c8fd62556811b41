"""Files only this user may read: fgl's run directories and what is in them (0700 / 0600).

A run directory names hosts, SSH keys and commands, holds the nodes' output, and ``fgl down``
acts on what its ``run.json`` says: nobody else may read it or write it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO


def private_dir(path: Path) -> None:
    """Create ``path`` (and parents) and make it 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)


def private_file(path: Path, mode: str = "w") -> IO[str]:
    """Open ``path`` for writing ("w") or appending ("a"), readable by this user only (0600)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "a" else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, mode, encoding="utf-8")
