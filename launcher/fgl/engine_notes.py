"""What fgl remembers about engines between runs (``$XDG_STATE_HOME/fgl/engines.json``, by default
~/.local/state/fgl/engines.json).

Today one fact: the engine refuses the ``memlock=-1`` ulimit (rootless Docker, some sandboxes). Without
the note every ``fgl up`` would pay a refused create and start per node before falling back. Engines are
keyed by their ID, version, kernel and default runtime, so an upgraded or reinstalled engine is asked
again.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

NOTES_FILE = "engines.json"


def engine_key(info: Mapping[str, Any]) -> str | None:
    """An engine's identity from ``docker info``; None when the engine reports no ID."""
    if not info.get("ID"):
        return None
    parts = (info.get(k) or "" for k in ("ID", "ServerVersion", "KernelVersion", "DefaultRuntime"))
    return "|".join(parts)


def notes_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state).expanduser() / "fgl" / NOTES_FILE


def load_notes(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every remembered engine's notes; empty when there are none or the file is unreadable."""
    path = path or notes_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def refuses_memlock(key: str | None, notes: Mapping[str, Mapping[str, Any]]) -> bool:
    return bool(key) and bool(notes.get(key, {}).get("refuses_memlock"))


def remember_memlock_refusal(key: str | None, path: Path | None = None) -> None:
    """Note that the engine ``key`` refuses memlock=-1 (atomic write; failures are ignored: a note
    only saves time)."""
    if not key:
        return
    path = path or notes_path()
    notes = load_notes(path)
    notes.setdefault(key, {})["refuses_memlock"] = True
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".engines-", suffix=".tmp")
        with os.fdopen(fd, "w") as out:
            json.dump(notes, out, indent=1, sort_keys=True)
        os.replace(tmp, path)
