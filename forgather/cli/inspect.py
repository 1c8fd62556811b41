"""Commands that show a project and its configs: ls, meta, targets, tlist, trefs, pp, graph, code, construct."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from forgather.cli import common
from forgather.cli.common import EXTRA_ARGS, OVERRIDES_HELP

SKIP_DIRS = {"output_models", "__pycache__", "node_modules", "venv", "env", "site-packages"}


# ---- ls -------------------------------------------------------------------------------------


def _is_venv(path: Path) -> bool:
    return (path / "pyvenv.cfg").is_file() or (path / "conda-meta").is_dir()


def find_projects(root: Path) -> list[Path]:
    """Directories at or below `root` holding a meta.yaml (hidden dirs, outputs and venvs skipped)."""
    found: list[Path] = []
    for directory, dirnames, filenames in os.walk(root):
        here = Path(directory)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".") and d not in SKIP_DIRS and not _is_venv(here / d)
        )
        if "meta.yaml" in filenames:
            found.append(here)
    return found


def describe_config(project_dir: Path, name: str) -> tuple[str, str]:
    """The config's `meta.config_name` and description (empty when it has no `meta` target)."""
    from forgather.project import Project

    config = Project(name, project_dir).config
    if "meta" not in config.targets:
        return "", ""
    meta = config.build("meta")
    if not isinstance(meta, dict):
        return "", ""
    return str(meta.get("config_name") or ""), str(meta.get("config_description") or "")


def project_listing(project_dir: Path, show_path: bool) -> list[Any]:
    """The `ls` lines of one project, as rich Text."""
    from rich.text import Text

    from forgather.project import MetaConfig

    lines: list[Any] = []
    try:
        meta = MetaConfig.load(project_dir)
    except Exception as error:  # a broken meta.yaml is shown, not fatal
        lines.append(Text.assemble((str(project_dir), "bold"), "  "))
        lines.append(
            Text.assemble("    ", ("PARSE ERROR: ", "bold red"), common.one_line(str(error)))
        )
        return lines
    header = Text.assemble((meta.name, "bold cyan"))
    if meta.description:
        header.append(f": {meta.description}")
    if show_path:
        header.append(f"  ({project_dir})", "dim")
    lines.append(header)
    names = meta.config_names()
    width = max((len(n) for n in names), default=0)
    default = meta.default_config
    for name in names:
        mark = "[x]" if name == default else "[ ]"
        line = Text.assemble("    ", (mark, "green" if name == default else ""), " ")
        line.append(name.ljust(width), "bold" if name == default else "")
        try:
            config_name, description = describe_config(project_dir, name)
        except Exception as error:  # ls lists broken configs instead of failing
            line.append("  ")
            line.append("PARSE ERROR: ", "bold red")
            line.append(common.one_line(str(error)))
        else:
            if config_name:
                line.append(f"  {config_name}", "yellow")
            if description:
                line.append(f" : {description}")
        lines.append(line)
    if not names:
        lines.append(Text(f"    (no configs under {meta.config_prefix}/)", "dim"))
    return lines


def ls(
    ctx: typer.Context,
    project_dirs: Annotated[
        list[Path] | None,
        typer.Argument(help="Projects to list (default: the -p project)", show_default=False),
    ] = None,
    recursive: Annotated[
        bool,
        typer.Option(
            "-r", "--recursive", help="Find projects in subdirectories (meta.yaml files)."
        ),
    ] = False,
) -> None:
    """List a project's configs with their names and descriptions; the default one is marked x."""
    roots = (
        [Path(p) for p in project_dirs] if project_dirs else [Path(common.state(ctx).project_dir)]
    )
    projects: list[Path] = []
    for root in roots:
        if recursive:
            if not root.is_dir():
                raise common.project_error(f"{root} is not a directory")
            projects.extend(p for p in find_projects(root.resolve()) if p not in projects)
        else:
            found = common.find_project(root)
            if found not in projects:
                projects.append(found)
    if not projects:
        raise common.project_error(f"no projects (meta.yaml) under {', '.join(map(str, roots))}")
    show_path = len(projects) > 1 or recursive
    output: list[Any] = []
    for index, project_dir in enumerate(projects):
        if index:
            output.append("")
        output.extend(project_listing(project_dir, show_path))
    out = common.console()
    for line in output:
        out.print(line, soft_wrap=True)


# ---- meta, targets --------------------------------------------------------------------------


def meta(ctx: typer.Context) -> None:
    """Show the project's meta: name, description, directories, search path and configs."""
    info = common.load_meta(ctx)
    rows = [
        ("name", info.name),
        ("description", info.description),
        ("project dir", str(info.project_dir)),
        ("workspace root", str(info.workspace_root) if info.workspace_root else "none"),
        ("config prefix", info.config_prefix),
        ("default config", info.default_config or "none"),
    ]
    lines = [f"{key + ':':<16}{value}" for key, value in rows]
    lines.append("search path:")
    lines.extend(f"    {path}" for path in info.searchpath)
    lines.append("configs:")
    lines.extend(f"    {name}" for name in info.config_names())
    common.echo_text("\n".join(lines))


def targets(ctx: typer.Context) -> None:
    """List the config's top-level targets, one per line."""
    project = common.load(ctx)
    common.echo_text("\n".join(project.targets))


# ---- tlist, trefs ---------------------------------------------------------------------------


class TlistFormat(StrEnum):
    md = "md"
    files = "files"


def tlist(
    ctx: typer.Context,
    format: Annotated[
        TlistFormat,
        typer.Option(
            "--format", help="md: a markdown list per search directory; files: name and path."
        ),
    ] = TlistFormat.md,
) -> None:
    """List the templates available in the project's search path."""
    from forgather.cli.template_catalogue import templates_in
    from forgather.config.environment import ConfigEnvironment

    info = common.load_meta(ctx)
    env = ConfigEnvironment(info.searchpath)
    lines: list[str] = []
    if format is TlistFormat.files:
        names = env.config_loader.list_templates()
        width = max((len(n) for n in names), default=0)
        for name in names:
            lines.append(f"{name.ljust(width)}  {env.config_loader.find_file(name)}")
    else:
        for directory in env.searchpath:
            lines.append(f"- {directory}")
            for name in templates_in(directory):
                lines.append(f"    - [{name}]({os.path.join(directory, name)})")
    common.echo_text("\n".join(lines))


class TrefsFormat(StrEnum):
    tree = "tree"
    files = "files"


def used_templates(env: Any) -> list[str]:
    """Templates the environment loaded, in load order, each once."""
    seen: dict[str, None] = {}
    for name in env.config_loader.loaded:
        if name in env.config_loader.templates:
            seen.setdefault(name, None)
    return list(seen)


def template_references(env: Any, names: list[str]) -> dict[str, list[str]]:
    """For each template, the templates it names statically (extends, include, import)."""
    from jinja2 import meta as jinja_meta

    refs: dict[str, list[str]] = {}
    for name in names:
        source = env.config_loader.templates[name].jinja_source
        try:
            found = jinja_meta.find_referenced_templates(env.parse(source))
        except Exception:  # already rendered, so this should not happen; show no children
            found = []
        refs[name] = list(dict.fromkeys(r for r in found if r))
    return refs


def trefs(
    ctx: typer.Context,
    format: Annotated[
        TrefsFormat,
        typer.Option("--format", help="tree: who references whom; files: name and file of each."),
    ] = TrefsFormat.tree,
) -> None:
    """Show the templates the selected config uses."""
    project = common.load(ctx)
    env = project.environment
    names = used_templates(env)
    loader = env.config_loader
    if format is TrefsFormat.files:
        width = max((len(n) for n in names), default=0)
        common.echo_text("\n".join(f"{n.ljust(width)}  {loader.templates[n].file}" for n in names))
        return
    from rich.markup import escape
    from rich.tree import Tree

    refs = template_references(env, names)
    root_name = project.template_name if project.template_name in refs else names[0]

    def label(name: str) -> str:
        return f"[bold]{escape(name)}[/bold]  [dim]{escape(loader.templates[name].file)}[/dim]"

    placed: set[str] = set()

    def grow(tree: Tree, name: str, path: tuple[str, ...]) -> None:
        placed.add(name)
        for child in refs.get(name, []):
            if child in path:
                tree.add(f"{escape(child)} [dim](cycle)[/dim]")
            elif child in refs:
                grow(tree.add(label(child)), child, (*path, child))

    tree = Tree(label(root_name))
    grow(tree, root_name, (root_name,))
    for name in names:  # loaded through a name only known while rendering
        if name not in placed:
            grow(tree.add(f"{label(name)} [dim](dynamic)[/dim]"), name, (name,))
    common.console().print(tree)


# ---- pp -------------------------------------------------------------------------------------


def debug_sources(project: Any) -> str:
    """Each used template's Jinja source after line-statement translation, with file line numbers."""
    env = project.environment
    parts: list[str] = []
    for name in used_templates(env):
        loaded = env.translated_source(name)
        lines = loaded.jinja_source.splitlines()
        width = len(str(loaded.first_line + len(lines)))
        parts.append(f"### {name}  ({loaded.file})")
        parts.extend(f"{loaded.first_line + i:>{width}}: {line}" for i, line in enumerate(lines))
        parts.append("")
    return "\n".join(parts)


def pp(
    ctx: typer.Context,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="Show each template's Jinja source (after line-statement translation) with file line numbers.",
        ),
    ] = False,
) -> None:
    """Print the rendered (preprocessed) config text."""
    project = common.load(ctx)
    if debug:
        common.echo_text(debug_sources(project))
    else:
        common.echo_text(project.config.rendered.text)


# ---- graph, code, construct -----------------------------------------------------------------


class GraphFormat(StrEnum):
    yaml = "yaml"
    python = "python"
    repr = "repr"


def graph(
    ctx: typer.Context,
    format: Annotated[
        GraphFormat,
        typer.Option(
            "--format",
            help="yaml: the graph as YAML; python: code that builds it; repr: Python objects.",
        ),
    ] = GraphFormat.yaml,
) -> None:
    """Show the config's graph (all targets)."""
    project = common.load(ctx)
    config = project.config
    if format is GraphFormat.yaml:
        from forgather.config.yaml_encoder import to_yaml

        common.echo_text(to_yaml(config.graph))
    elif format is GraphFormat.python:
        from forgather.config.codegen import generate_code

        common.echo_text(generate_code(config.targets, source=project.config_name))
    else:
        common.print_pretty(config.graph)


TargetOption = Annotated[str, typer.Option("--target", help="The target to use.")]


def code(ctx: typer.Context, target: TargetOption = "main") -> None:
    """Print Python code that builds a target."""
    from forgather.config.codegen import generate_code

    project = common.load(ctx)
    common.echo_text(generate_code(project.config.target(target), source=project.config_name))


def construct(
    ctx: typer.Context,
    target: TargetOption = "main",
    call: Annotated[
        bool, typer.Option("--call", help="Call the built object with no arguments.")
    ] = False,
) -> None:
    """Build a target (a fresh build) and pretty-print the result."""
    from forgather.config import errors

    project = common.load(ctx)
    result = project.config.build(target)
    if call:
        if not callable(result):
            raise errors.BuildError(
                f"--call: target {target!r} built a {type(result).__name__}, which is not callable",
                key=target,
            )
        try:
            result = result()
        except errors.ConfigError:
            raise
        except Exception as error:
            raise errors.BuildError(
                f"calling target {target!r} raised {type(error).__name__}: {error}", key=target
            ) from error
    common.print_pretty(result)


def register(app: typer.Typer) -> None:
    app.command("ls")(ls)
    app.command("meta")(meta)
    app.command("tlist")(tlist)
    for command in (targets, trefs, pp, graph, code, construct):
        app.command(command.__name__, context_settings=EXTRA_ARGS, epilog=OVERRIDES_HELP)(command)
