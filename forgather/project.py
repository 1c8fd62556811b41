"""Projects: a directory with a `meta.yaml`, a template search path and a set of selectable configs."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forgather.config import errors
from forgather.config.environment import ConfigEnvironment
from forgather.config.graph import Config, check_before_build, load_config
from forgather.config.jinja_globals import Versions
from forgather.config.overrides import Override, apply_overrides
from forgather.config.yaml_graph import parse_graph
from forgather.workspace import (
    FORGATHER_DIR,
    TEMPLATELIB_DIR,
    find_project_dir,
    find_workspace,
    meta_searchpath,
)

DEFAULT_CONFIG_PREFIX = "configs"


def project_globals(project_dir: Path, workspace: Path | None) -> dict[str, Any]:
    """Jinja globals that tell templates where they are."""
    return {
        "project_dir": str(project_dir),
        "workspace_root": str(workspace or project_dir),
        "forgather_dir": str(FORGATHER_DIR),
        "templatelib_dir": str(TEMPLATELIB_DIR),
        "hostname": socket.gethostname(),
        "versions": Versions(),
    }


@dataclass
class MetaConfig:
    """A project's `meta.yaml`, rendered and parsed."""

    project_dir: Path
    workspace_root: Path | None
    data: dict[str, Any] = field(default_factory=dict)
    text: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)  # meta.yaml key -> Provenance

    @classmethod
    def load(cls, project_dir: str | os.PathLike) -> MetaConfig:
        directory = Path(project_dir).resolve()
        if not (directory / "meta.yaml").is_file():
            raise errors.ProjectError(
                f"{directory} has no meta.yaml (is -p pointing at a project?)"
            )
        workspace = find_workspace(directory)
        env = ConfigEnvironment(
            meta_searchpath(directory, workspace), project_globals(directory, workspace)
        )
        rendered = env.render("meta.yaml")
        graph = parse_graph(rendered.text, rendered, source="meta.yaml")
        if graph is None:
            graph = {}
        if not isinstance(graph, dict):
            raise errors.ProjectError("meta.yaml must render to a mapping", rendered.origin(1))
        return cls(
            directory, workspace, dict(graph), rendered.text, dict(getattr(graph, "provenance", {}))
        )

    def _paths(self, key: str, default: list[Any]) -> list[Any]:
        """A meta.yaml entry that holds a path or a list of paths; a clear error otherwise."""
        raw = self.data.get(key) or default
        if isinstance(raw, str | os.PathLike):
            raw = [raw]
        if not isinstance(raw, list | tuple) or not all(
            isinstance(p, str | os.PathLike) and "\0" not in str(p) for p in raw
        ):
            record = self.provenance.get(key)
            raise errors.ProjectError(
                f"meta.yaml: {key} must be a path or a list of paths (got {raw!r})",
                record.origin if record else None,
                key,
            )
        return list(raw)

    @property
    def name(self) -> str:
        return str(self.data.get("name") or self.project_dir.name)

    @property
    def description(self) -> str:
        return str(self.data.get("description") or "")

    @property
    def config_prefix(self) -> str:
        return str(self.data.get("config_prefix") or DEFAULT_CONFIG_PREFIX)

    @property
    def searchpath(self) -> list[str]:
        """Directories searched for config templates, in order (missing ones dropped)."""
        raw = self._paths("searchdir", [self.project_dir / "templates"])
        paths: list[str] = []
        for entry in [*raw, TEMPLATELIB_DIR / "base"]:
            path = Path(str(entry))
            if not path.is_absolute():
                path = self.project_dir / path
            path = path.resolve()
            if path.is_dir() and str(path) not in paths:
                paths.append(str(path))
        return paths

    @property
    def system_path(self) -> list[str]:
        return [str(p) for p in self._paths("system_path", [])]

    def config_names(self) -> list[str]:
        """Every selectable config (file names under `<searchdir>/<config_prefix>/`), sorted."""
        names: set[str] = set()
        for directory in self.searchpath:
            root = Path(directory) / self.config_prefix
            if root.is_dir():
                for path in root.rglob("*"):
                    if path.is_file() and path.suffix in (".yaml", ".yml"):
                        names.add(path.relative_to(root).as_posix())
        return sorted(names)

    @property
    def default_config(self) -> str | None:
        configured = self.data.get("default_config")
        if configured:
            return str(configured)
        names = self.config_names()
        return names[0] if names else None


class Project:
    """A project's config, loaded and ready to build.

    `Project("train.yaml", "path/to/project", max_steps=10)` renders `configs/train.yaml` with the Jinja
    variable `max_steps=10`; `proj()` builds `main`, `proj("model")` one target, `proj("a", "b")` a tuple
    of targets from one build, `proj(["a", "b"])` a dict. Keyword args of a call are `!var` values.
    """

    def __init__(
        self,
        config_template: str = "",
        project_dir: str | os.PathLike = ".",
        *,
        overrides: Iterable[str | Override] = (),
        **config_vars: Any,
    ):
        found = find_project_dir(project_dir)
        if found is None:
            raise errors.ProjectError(f"no meta.yaml at or above {Path(project_dir).resolve()}")
        self.project_dir = found
        self.meta = MetaConfig.load(found)
        self.environment = ConfigEnvironment(
            self.meta.searchpath, project_globals(found, self.meta.workspace_root)
        )
        name = config_template or self.meta.default_config
        if not name:
            raise errors.ProjectError(
                f"{found}: no configs under {self.meta.config_prefix}/ and no default_config in meta.yaml"
            )
        self.config_name = name
        self.config_vars = dict(config_vars)
        if os.path.isabs(self.template_name):  # a config selected by its path (-t /path/x.yaml)
            self.environment.config_loader.allow_file(self.template_name)
        self.config: Config = load_config(self.environment, self.template_name, **config_vars)
        self.overrides = list(overrides)
        apply_overrides(self.config.graph, self.overrides)

    @property
    def template_name(self) -> str:
        """The Jinja template name of the selected config."""
        name = self.config_name
        if os.path.isabs(name):
            return name
        return f"{self.meta.config_prefix}/{name}"

    @property
    def pp_config(self) -> str:
        return self.config.pp_config

    @property
    def targets(self) -> list[str]:
        return [str(t) for t in self.config.targets]

    def __call__(self, *targets: Any, **context_vars: Any) -> Any:
        """Build `main`, one target, several targets (tuple) or a list of targets (dict), in one build."""
        names = (
            targets[0] if len(targets) == 1 and isinstance(targets[0], list | tuple) else targets
        )
        for name in names or ("main",):
            check_before_build(self.config.target(name), context_vars, self.config.targets)
        builder = self.config.builder(**context_vars)
        if not targets:
            return builder.build(self.config.target("main"))
        if len(targets) == 1 and isinstance(targets[0], list | tuple):
            return {name: builder.build(self.config.target(name)) for name in targets[0]}
        if len(targets) == 1:
            return builder.build(self.config.target(targets[0]))
        return tuple(builder.build(self.config.target(name)) for name in targets)


def from_project(
    project_dir: str | os.PathLike,
    config_template: str = "",
    targets: str | list[str] = "main",
    pp_kwargs: dict[str, Any] | None = None,
    **config_kwargs: Any,
) -> Any:
    """Build targets of another project (used from configs as `!call:forgather:from_project`).

    `pp_kwargs` are Jinja variables for that project's config; other keyword args are its `!var` values.
    """
    project = Project(config_template, project_dir, **(pp_kwargs or {}))
    if isinstance(targets, str):
        return project(targets, **config_kwargs)
    return project(list(targets), **config_kwargs)


def load_project(
    project_dir: str | os.PathLike = ".",
    config_template: str = "",
    tokens: Iterable[str] = (),
) -> Project:
    """Load a project's config the way the CLI does: `key.path=value` overrides and declared `--flags`.

    Tokens that look like overrides (`a.b=1`, `+a.c=2`, `~a.d`) are applied to the graph; the rest are
    parsed against the config's `dynamic_args`, whose values re-render the config as Jinja variables.
    Both are recorded in provenance. Unknown flags and overrides that match nothing are errors.
    """
    from forgather.config.dynamic_args import declared_args, parse_flags, record_flag_provenance
    from forgather.config.overrides import is_override, parse_override

    tokens = list(tokens)
    overrides = [parse_override(t) for t in tokens if is_override(t)]
    flags = [t for t in tokens if not is_override(t)]
    project = Project(config_template, project_dir)
    declared = declared_args(project.config) if flags else []
    values, texts = parse_flags(declared, flags) if flags else ({}, {})
    if values:
        base = project.config
        project = Project(config_template, project_dir, **values)
        record_flag_provenance(base, project.config, texts)
    if overrides:
        project.overrides = overrides
        apply_overrides(project.config.graph, overrides)
    return project
