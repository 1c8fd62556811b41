"""Turn config-template text into Jinja2 source, keeping every line where it was.

The config language adds a few line-level conveniences on top of Jinja2:

* `## comment` on a line of its own, or after whitespace at the end of a line (outside quotes);
* line statements: `-- X` → `{% X %}`, `<< X` → `{%- X %}`, `>> X` → `{% X -%}`, `== X` → `{{ X }}`,
  `=> X` → `{{ X|trim('\\n') }}`;
* `[name]` / `[name!]` on a line of its own opens a Jinja block that runs until the next bracket line at
  the same or lower indentation (or the end of the template); `!` trims the block's output;
* a backslash before any of these markers (`\\-- text`) keeps the line literal.

Translation is line-for-line, so a Jinja error's line number is the template's line number. Each line of
plain text also receives an invisible *source marker* that survives rendering; `split_markers` removes the
markers from the rendered text and returns, for every rendered line, the template line that produced it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from forgather.config.origin import Origin

SUBTEMPLATE_RE = re.compile(r"^#\s*-{3,}\s*([\w./-]+)\s*-{3,}\s*$")
LINE_STATEMENT_RE = re.compile(r"^\s*(--|<<|>>|==|=>)\s(.*)$")
ESCAPED_RE = re.compile(r"^(\s*)\\(--|<<|>>|==|=>|\[|##)")
BLOCK_RE = re.compile(r"^(\s*)\[(\w+)(!)?\]\s*$")
WHOLE_LINE_COMMENT_RE = re.compile(r"^\s*##")

MARK_OPEN = "\ue000"
MARK_CLOSE = "\ue001"
MARKER_RE = re.compile(f"{MARK_OPEN}(\\d+){MARK_CLOSE}")

_QUOTE_OPENERS = set(" \t:[{,(=|")


@dataclass(frozen=True)
class Chunk:
    """A template carved out of a file: its name, text and the file line its first line sits on."""

    name: str
    text: str
    first_line: int  # 1-based line in the file


def split_subtemplates(text: str, name: str) -> list[Chunk]:
    """Split file text at `#---- sub.name ----` lines into the file's own template and its sub-templates."""
    chunks: list[Chunk] = []
    current_name, start, lines = name, 1, []
    for lineno, line in enumerate(text.split("\n"), start=1):
        match = SUBTEMPLATE_RE.match(line)
        if match:
            chunks.append(Chunk(current_name, "\n".join(lines), start))
            current_name, start, lines = match.group(1), lineno + 1, []
        else:
            lines.append(line)
    chunks.append(Chunk(current_name, "\n".join(lines), start))
    return chunks


def find_trailing_comment(line: str) -> int:
    """Index of a `##` comment that starts after whitespace outside quotes, or -1."""
    quote: str | None = None
    i, n = 0, len(line)
    while i < n:
        ch = line[i]
        if quote:
            if quote == '"' and ch == "\\":
                i += 2
                continue
            if ch == quote:
                if quote == "'" and i + 1 < n and line[i + 1] == "'":
                    i += 2
                    continue
                quote = None
        elif ch in "'\"" and (i == 0 or line[i - 1] in _QUOTE_OPENERS):
            if line.find(ch, i + 1) != -1:
                quote = ch
        elif ch == "#" and line.startswith("##", i) and (i == 0 or line[i - 1] in " \t"):
            return i
        i += 1
    return -1


def translate_line_statements(text: str) -> str:
    """Translate comments, line statements and `[block]` shorthand to Jinja2, line for line."""
    out: list[str] = []
    open_blocks: list[tuple[int, str, bool]] = []  # (indent, name, trim)

    def close_blocks(indent: int) -> str:
        closing = ""
        while open_blocks and open_blocks[-1][0] >= indent:
            _, name, trim = open_blocks.pop()
            if trim:
                closing += f"{{% endfilter %}}{{% endblock {name} %}}"
            else:
                closing += f"{{{{ '\\n' }}}}{{% endblock {name} %}}"
        return closing

    for line in text.split("\n"):
        escaped = ESCAPED_RE.match(line)
        if escaped:
            out.append(escaped.group(1) + line[escaped.end(1) + 1 :])
            continue
        if WHOLE_LINE_COMMENT_RE.match(line):
            out.append("{# #}")
            continue
        cut = find_trailing_comment(line)
        if cut >= 0:
            line = line[:cut].rstrip()
        block = BLOCK_RE.match(line)
        if block:
            indent = len(block.group(1).expandtabs())
            prefix = close_blocks(indent)
            name, trim = block.group(2), bool(block.group(3))
            open_blocks.append((indent, name, trim))
            opening = f"{{% block {name} %}}" + ("{% filter trim %}" if trim else "")
            out.append(prefix + opening)
            continue
        statement = LINE_STATEMENT_RE.match(line)
        if statement:
            marker, body = statement.group(1), statement.group(2).strip()
            out.append(
                {
                    "--": f"{{% {body} %}}",
                    "<<": f"{{%- {body} %}}",
                    ">>": f"{{% {body} -%}}",
                    "==": f"{{{{ {body} }}}}",
                    "=>": f"{{{{ {body}|trim('\\n') }}}}",
                }[marker]
            )
            continue
        out.append(line)
    if open_blocks:
        out[-1] += close_blocks(0)
    return "\n".join(out)


def data_line_starts(source: str) -> Iterator[bool]:
    """For each line of Jinja source, whether the line starts in plain template data."""
    state = "data"  # data | var | block | comment | raw
    quote: str | None = None
    tag_start = 0
    i, n = 0, len(source)
    yield True
    while i < n:
        ch = source[i]
        if ch == "\n":
            i += 1
            yield state in ("data", "raw")
            continue
        if state in ("data", "raw"):
            if ch == "{" and i + 1 < n and source[i + 1] in "{%#":
                opener = source[i + 1]
                if state == "raw":
                    if opener == "%" and re.match(r"\{%-?\s*endraw\b", source[i:]):
                        state, tag_start = "block", i + 2
                        i += 2
                        continue
                    i += 1
                    continue
                state = {"{": "var", "%": "block", "#": "comment"}[opener]
                tag_start = i + 2
                i += 2
                continue
            i += 1
            continue
        if state == "comment":
            if source.startswith("#}", i):
                state = "data"
                i += 2
                continue
            i += 1
            continue
        # inside {{ }} or {% %}
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = None
            i += 1
            continue
        if ch in "'\"":
            quote = ch
            i += 1
            continue
        closer = "}}" if state == "var" else "%}"
        if source.startswith(closer, i):
            if state == "block" and re.fullmatch(r"\s*-?\s*raw\s*-?\s*", source[tag_start:i]):
                state = "raw"
            else:
                state = "data"
            i += 2
            continue
        i += 1


class SourceMap:
    """Numbers every marked template line so rendered text can be traced back to it."""

    def __init__(self) -> None:
        self._origins: list[Origin] = []
        self._ids: dict[Origin, int] = {}

    def marker(self, origin: Origin) -> str:
        """The invisible marker that stands for `origin` in rendered text."""
        index = self._ids.get(origin)
        if index is None:
            index = len(self._origins)
            self._origins.append(origin)
            self._ids[origin] = index
        return f"{MARK_OPEN}{index}{MARK_CLOSE}"

    def origin(self, index: int) -> Origin:
        return self._origins[index]

    def mark(self, source: str, file: str, first_line: int, template: str) -> str:
        """Insert a marker after the indentation of every non-blank line that starts in plain data."""
        lines = source.split("\n")
        starts = list(data_line_starts(source))
        for k, (line, is_data) in enumerate(zip(lines, starts, strict=False)):
            stripped = line.lstrip()
            if not is_data or not stripped:
                continue
            if stripped.startswith(("{%", "{#", "{{-")):
                continue
            indent = len(line) - len(stripped)
            origin = Origin(file, first_line + k, template)
            lines[k] = line[:indent] + self.marker(origin) + stripped
        return "\n".join(lines)

    def _known(self, match: re.Match[str]) -> bool:
        # Text that merely looks like a marker (the same private-use characters typed into a template)
        # is left alone.
        return int(match.group(1)) < len(self._origins)

    def _strip(self, text: str) -> str:
        return MARKER_RE.sub(lambda m: "" if self._known(m) else m.group(0), text)

    def split(self, rendered: str) -> tuple[str, list[Origin | None]]:
        """Remove markers; return clean text and the origin of each of its lines (index 0 = line 1)."""
        clean_lines: list[str] = []
        origins: list[Origin | None] = []
        previous: Origin | None = None
        for raw in rendered.split("\n"):
            origin = None
            pos = 0
            markers = [m for m in MARKER_RE.finditer(raw) if self._known(m)]
            for match in markers:
                before = self._strip(raw[pos : match.start()])
                if before.strip():
                    break
                origin = self._origins[int(match.group(1))]
                pos = match.end()
            if origin is None:
                origin = self._origins[int(markers[0].group(1))] if markers else previous
            clean_lines.append(self._strip(raw))
            origins.append(origin)
            previous = origin
        return "\n".join(clean_lines), origins


def strip_markers(text: str) -> str:
    """Text with every source marker removed."""
    return MARKER_RE.sub("", text)
