"""Console output: rich on a terminal, plain lines otherwise; errors are one red line."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

NODE_COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "bright_red", "bright_cyan")


def error(message: str) -> None:
    """Print one red line on stderr."""
    if err_console.is_terminal:
        err_console.print(f"[red]error:[/red] {escape(message)}")
    else:
        print(f"error: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """Print one yellow line on stderr."""
    if err_console.is_terminal:
        err_console.print(f"[yellow]warning:[/yellow] {escape(message)}")
    else:
        print(f"warning: {message}", file=sys.stderr, flush=True)


def info(message: str) -> None:
    """Print one line on stderr (progress and notes, keeping stdout for results)."""
    if err_console.is_terminal:
        err_console.print(f"[dim]fgl:[/dim] {escape(message)}")
    else:
        print(f"fgl: {message}", file=sys.stderr, flush=True)


def table(
    columns: Sequence[str], rows: Sequence[Sequence[object]], title: str | None = None
) -> None:
    """Print a table: boxed on a terminal, tab-free aligned plain text otherwise."""
    if console.is_terminal:
        t = Table(*columns, title=title, header_style="bold")
        for row in rows:
            t.add_row(*("" if c is None else str(c) for c in row))
        console.print(t)
        return
    cells = [list(columns)] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), flush=True)


def node_colour(rank: int) -> str:
    """The colour of node ``rank``'s log prefix."""
    return NODE_COLOURS[rank % len(NODE_COLOURS)]
