"""Live logs: split each container's byte stream into lines, print them with a coloured ``[node-i]``
prefix, and copy them (prefixed) to ``<run dir>/node-i.log``."""

from __future__ import annotations

import codecs
import re
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TextIO

from rich.text import Text

from fgl.containers import mask_text
from fgl.files import private_file
from fgl.output import console, node_colour


class LineSplitter:
    """Turns arbitrary byte chunks into complete text lines (UTF-8 split across chunks is fine)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""

    def feed(self, chunk: bytes) -> list[str]:
        """The lines completed by ``chunk`` (without their newline)."""
        text = self._pending + self._decoder.decode(chunk)
        lines = text.split("\n")
        self._pending = lines.pop()
        return [line.rstrip("\r").split("\r")[-1] for line in lines]

    def flush(self) -> list[str]:
        """The last, unterminated line if any."""
        text = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        return [text.rstrip("\r").split("\r")[-1]] if text else []


def prefix(label: str) -> str:
    """The plain prefix of a node's lines."""
    return f"[{label}]"


class LogSink:
    """Writes prefixed lines to the terminal (coloured when it is one) and to per-node files."""

    def __init__(
        self,
        run_dir: Path | None = None,
        stream: TextIO | None = None,
        colour: bool | None = None,
        secrets: dict[str, str] | None = None,
        prefixed: bool = True,
    ):
        self.run_dir = run_dir
        self._stream = stream
        self._colour = console.is_terminal if colour is None and stream is None else bool(colour)
        self._lock = threading.Lock()
        self._files: dict[str, TextIO] = {}
        self._secrets = secrets or {}
        self.prefixed = prefixed

    def path(self, label: str) -> Path | None:
        return self.run_dir / f"{label}.log" if self.run_dir else None

    def write(self, label: str, rank: int, line: str) -> None:
        """One line from node ``label`` (rank decides the colour)."""
        line = mask_text(line, self._secrets)
        plain = f"{prefix(label)} {line}"
        with self._lock:
            if self.run_dir is not None:
                f = self._files.get(label)
                if f is None:
                    f = self._files[label] = private_file(self.path(label), "a")
                f.write(plain + "\n")
                f.flush()
            if not self.prefixed:
                out = self._stream or sys.stdout
                out.write(line + "\n")
                out.flush()
            elif self._colour:
                text = Text(prefix(label), style=f"bold {node_colour(rank)}")
                text.append(" " + line)
                console.print(text, soft_wrap=True)
            else:
                out = self._stream or sys.stdout
                out.write(plain + "\n")
                out.flush()

    def pump(
        self,
        label: str,
        rank: int,
        chunks: Iterable[bytes],
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        """Copy a whole byte stream (e.g. ``container.logs(stream=True, follow=True)``) line by line."""
        splitter = LineSplitter()
        try:
            for chunk in chunks:
                for line in splitter.feed(chunk):
                    self.write(label, rank, line)
                    if on_line:
                        on_line(line)
        finally:
            for line in splitter.flush():
                self.write(label, rank, line)
                if on_line:
                    on_line(line)

    def close(self) -> None:
        with self._lock:
            for f in self._files.values():
                f.close()
            self._files.clear()


class TorchrunReport:
    """Reads torchrun's failure report in a log: the exit code of the first failed worker.

    torchrun itself exits 1 whenever a worker fails; its report names the root cause's ``exitcode``.
    A negative exitcode (killed by a signal) becomes 128 + signal, as a shell would report it.
    """

    _ROOT = re.compile(r"Root Cause \(first observed failure\)")
    _CODE = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")

    def __init__(self) -> None:
        self.in_root_cause = False
        self.exit_code: int | None = None

    def feed(self, line: str) -> None:
        if self.exit_code is not None:
            return
        if self._ROOT.search(line):
            self.in_root_cause = True
        elif self.in_root_cause:
            m = self._CODE.match(line)
            if m:
                code = int(m.group(1))
                self.exit_code = 128 - code if code < 0 else code
