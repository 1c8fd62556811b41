"""The Jinja2 environment configs render in: search path, sub-templates, source markers, clear errors."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import BaseLoader, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from forgather.config import errors
from forgather.config.jinja_globals import default_filters, default_globals
from forgather.config.origin import Origin
from forgather.config.preprocess import (
    SourceMap,
    split_subtemplates,
    strip_markers,
    translate_line_statements,
)


@dataclass
class LoadedTemplate:
    """A template as the loader served it."""

    name: str
    file: str  # real file path, or `<string:name>` for templates given as text
    first_line: int  # file line of the template's first line
    text: str  # as written
    jinja_source: str  # after line-statement translation (no markers)
    jinja_filename: str  # the label Jinja uses in tracebacks


@dataclass
class Rendered:
    """A rendered config: the text, and the template line behind each of its lines."""

    text: str
    line_origins: list[Origin | None]

    def origin(self, line: int) -> Origin | None:
        """Origin of a 1-based rendered line."""
        if 1 <= line <= len(self.line_origins):
            return self.line_origins[line - 1]
        return None


class ConfigLoader(BaseLoader):
    """Finds templates in a search path; splits files into their inline sub-templates."""

    def __init__(self, searchpath: Iterable[str | os.PathLike], source_map: SourceMap):
        self.searchpath = [str(Path(p)) for p in searchpath]
        self.source_map = source_map
        self.templates: dict[str, LoadedTemplate] = {}
        self.by_filename: dict[str, LoadedTemplate] = {}
        self.strings: dict[str, str] = {}
        self.loaded: list[str] = []  # names in the order Jinja asked for them
        self.entry_files: set[str] = set()  # absolute names allowed (see allow_file)

    def add_template(self, name: str, text: str) -> None:
        """Make `text` available as template `name` (it may hold sub-templates too)."""
        self.strings[name] = text
        self.templates.pop(name, None)

    def allow_file(self, path: str | os.PathLike) -> None:
        """Let the absolute template name `path` load (the config file a user selected by path)."""
        self.entry_files.add(os.path.abspath(path))

    def find_file(self, name: str) -> str | None:
        """The file that template `name` lives in, searching the path in order.

        Names are relative to the search path: an absolute name (other than a config file the user
        selected by path) or one with a `..` segment is refused, so `include`, `import` and
        `extends` read only templates on the search path.
        """
        if os.path.isabs(name):
            if os.path.abspath(name) in self.entry_files and os.path.isfile(name):
                return os.path.abspath(name)
            raise errors.TemplateAccessError(
                f"template name {name!r} is absolute: include, import and extend templates by "
                f"names relative to the search path ({', '.join(self.searchpath)})"
            )
        if ".." in name.replace("\\", "/").split("/"):
            raise errors.TemplateAccessError(
                f"template name {name!r} climbs out of the search path ('..'): name templates "
                f"relative to it ({', '.join(self.searchpath)})"
            )
        for directory in self.searchpath:
            candidate = os.path.join(directory, name)
            if os.path.isfile(candidate):
                return os.path.abspath(candidate)
        return None

    def _register(self, file: str, text: str, name: str) -> None:
        for chunk in split_subtemplates(text, name):
            jinja_source = translate_line_statements(chunk.text)
            label = file if chunk.name == name else f"{file}::{chunk.name}"
            loaded = LoadedTemplate(
                chunk.name, file, chunk.first_line, chunk.text, jinja_source, label
            )
            self.templates[chunk.name] = loaded
            self.by_filename[label] = loaded

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        self.loaded.append(template)
        loaded = self.templates.get(template)
        if loaded is None:
            if template in self.strings:
                self._register(f"<string:{template}>", self.strings[template], template)
            else:
                path = self.find_file(template)
                if path is None:
                    raise jinja2.TemplateNotFound(template)
                with open(path, encoding="utf-8") as stream:
                    self._register(path, stream.read(), template)
            loaded = self.templates[template]
        marked = self.source_map.mark(
            loaded.jinja_source, loaded.file, loaded.first_line, loaded.name
        )
        return marked, loaded.jinja_filename, lambda: True

    def list_templates(self) -> list[str]:
        names: set[str] = set(self.strings)
        for directory in self.searchpath:
            for root, _dirs, files in os.walk(directory):
                for file in files:
                    if file.endswith((".yaml", ".yml", ".jinja", ".j2")):
                        rel = os.path.relpath(os.path.join(root, file), directory)
                        names.add(rel.replace(os.sep, "/"))
        return sorted(names)

    def unclosed_tag_origin(self, jinja_filename: str | None, tag: str) -> Origin | None:
        """Where the innermost `tag` (block, for, if, ...) that is never closed opens: Jinja only
        notices at the end of the template, the mistake is at the opening line."""
        loaded = self.by_filename.get(jinja_filename or "")
        if loaded is None:
            return None
        opened: list[int] = []
        pattern = re.compile(r"\{%[-+]?\s*(end)?(\w+)([^%]*)")
        for lineno, line in enumerate(loaded.jinja_source.split("\n"), start=1):
            for match in pattern.finditer(line):
                if match.group(2) != tag or (tag == "set" and "=" in match.group(3)):
                    continue
                if match.group(1):
                    if opened:
                        opened.pop()
                else:
                    opened.append(lineno)
        if not opened:
            return None
        return Origin(loaded.file, loaded.first_line + opened[-1] - 1, loaded.name)

    def origin_of(self, jinja_filename: str | None, lineno: int | None) -> Origin | None:
        """Translate a Jinja (filename, line) pair into a template file and line."""
        loaded = self.by_filename.get(jinja_filename or "")
        if loaded is None:
            return None
        # Jinja reports an unclosed tag one line past the end; name the template's last line instead.
        lineno = min(max(lineno or 1, 1), loaded.text.count("\n") + 1)
        return Origin(loaded.file, loaded.first_line + lineno - 1, loaded.name)


# Jinja's message for a tag never closed: "... The innermost block that needs to be closed is 'for'."
UNCLOSED_RE = re.compile(r"innermost block that needs to be closed is '(\w+)'")


class ConfigEnvironment(SandboxedEnvironment):
    """A sandboxed Jinja2 environment for config templates.

    Undefined variables are errors, blocks trim their trailing newline, and every rendered line can be
    traced to the template line that wrote it.
    """

    def __init__(
        self,
        searchpath: Iterable[str | os.PathLike] = (),
        global_vars: dict[str, Any] | None = None,
    ):
        self.source_map = SourceMap()
        super().__init__(
            loader=ConfigLoader(searchpath, self.source_map),
            undefined=StrictUndefined,
            trim_blocks=True,
            auto_reload=False,
        )
        self.globals.update(default_globals())
        self.globals.update(global_vars or {})
        self.filters.update(default_filters())

    @property
    def config_loader(self) -> ConfigLoader:
        assert isinstance(self.loader, ConfigLoader)
        return self.loader

    @property
    def searchpath(self) -> list[str]:
        return self.config_loader.searchpath

    def add_template(self, name: str, text: str) -> None:
        """Register an in-memory template (and its sub-templates) under `name`."""
        self.config_loader.add_template(name, text)
        self.cache = type(self.cache)(self.cache.capacity) if self.cache is not None else None

    def render(self, name: str, **variables: Any) -> Rendered:
        """Render template `name`; errors name the template file and line."""
        try:
            template = self.get_template(name)
            text = template.render(**variables)
        except errors.ConfigError as error:
            if error.origin is None:
                error.origin = self._origin_from_traceback(error)
            raise
        except jinja2.TemplateSyntaxError as error:
            origin = self.config_loader.origin_of(error.filename, error.lineno)
            unclosed = UNCLOSED_RE.search(error.message or "")
            if unclosed:  # name the line that opens it, not the end of the template
                origin = (
                    self.config_loader.unclosed_tag_origin(error.filename, unclosed.group(1))
                    or origin
                )
            if origin is None and error.name:
                origin = Origin(error.name, error.lineno or 0, error.name)
            raise errors.TemplateSyntaxError(strip_markers(error.message or ""), origin) from None
        except (jinja2.TemplateNotFound, jinja2.TemplatesNotFound) as error:
            origin = self._origin_from_traceback(error)
            searched = ", ".join(self.searchpath) or "(empty search path)"
            raise errors.TemplateNotFoundError(
                f"{error.message or error.name!r} is not in the search path: {searched}", origin
            ) from None
        except jinja2.UndefinedError as error:
            raise errors.UndefinedVariableError(
                strip_markers(str(error.message)), self._origin_from_traceback(error)
            ) from None
        except RecursionError:
            raise errors.TemplateRuntimeError(
                "templates include or extend each other endlessly"
            ) from None
        except Exception as error:  # any other failure inside template code is the config's
            message = strip_markers(f"{type(error).__name__}: {error}")
            raise errors.TemplateRuntimeError(message, self._origin_from_traceback(error)) from None
        clean, origins = self.source_map.split(text)
        return Rendered(clean, origins)

    def translated_source(self, name: str) -> LoadedTemplate:
        """The template `name` as written and after line-statement translation (for `pp --debug`)."""
        self.get_template(name)
        return self.config_loader.templates[name]

    def _origin_from_traceback(self, error: BaseException) -> Origin | None:
        origin = None
        tb = error.__traceback__
        while tb is not None:
            found = self.config_loader.origin_of(tb.tb_frame.f_code.co_filename, tb.tb_lineno)
            if found is not None:
                origin = found
            tb = tb.tb_next
        return origin
