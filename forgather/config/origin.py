"""Where a value in a config comes from: a template line, a command-line override or a dynamic arg."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Origin:
    """One place that set a value.

    `file` is the template's file path (or a pseudo path such as `<command line>`), `line` is 1-based,
    `template` is the Jinja template name the line belongs to.
    """

    file: str
    line: int = 0
    template: str | None = None
    kind: str = "template"  # "template" | "override" | "dynamic-arg" | "string"
    text: str | None = None  # e.g. the override as typed

    def __str__(self) -> str:
        if self.kind == "template":
            return f"{self.file}:{self.line}" if self.line else self.file
        if self.text:
            return f"{self.file} ({self.text})"
        return self.file


@dataclass
class Provenance:
    """Where a value was set, and the earlier values it replaced (oldest first)."""

    origin: Origin | None
    overrode: list[tuple[Origin | None, object]] = field(default_factory=list)
