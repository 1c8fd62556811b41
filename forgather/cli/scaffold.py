"""Commands that create things: `project create` and `ws create` (and `ws`: the current workspace)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from forgather.cli import common

project_app = typer.Typer(
    name="project", help="Create projects.", no_args_is_help=True, add_completion=False
)
ws_app = typer.Typer(
    name="ws",
    help="Workspaces. Without a subcommand: print the current workspace root.",
    invoke_without_command=True,
    add_completion=False,
)


def _yaml_str(text: str) -> str:
    """A YAML double-quoted scalar (JSON strings are YAML)."""
    return json.dumps(text, ensure_ascii=False)


def _jinja_str(text: str) -> str:
    """A Jinja string literal."""
    return json.dumps(text, ensure_ascii=False)


def project_files(
    name: str, description: str, config_prefix: str, default_config: str
) -> dict[str, str]:
    """The files of a new project, by relative path."""
    meta = (
        '-- extends "meta_defaults.yaml"\n'
        "-- block configs\n"
        f"name: {_yaml_str(name)}\n"
        f"description: {_yaml_str(description)}\n"
        f"config_prefix: {_yaml_str(config_prefix)}\n"
        f"default_config: {_yaml_str(default_config)}\n"
        "-- endblock configs\n"
    )
    base = (
        f"## {name}: the base of this project's configs. Configs extend it and fill `main_body`.\n"
        '-- extends "config_type.yaml"\n'
        "\n"
        "-- block config_metadata\n"
        "    == super()\n"
        f"    -- set ns.config_name = {_jinja_str(name)}\n"
        f"    -- set ns.config_description = {_jinja_str(description)}\n"
        "-- endblock config_metadata\n"
    )
    config_title = Path(default_config).stem.replace("_", " ").replace("-", " ").capitalize()
    config = (
        f"## {default_config}: the default config of {name}.\n"
        '-- extends "project.yaml"\n'
        "\n"
        "-- block config_metadata\n"
        "    == super()\n"
        f"    -- set ns.config_name = {_jinja_str(config_title)}\n"
        f"    -- set ns.config_description = {_jinja_str(f'The default config of {name}')}\n"
        "-- endblock config_metadata\n"
        "\n"
        "-- block main_body\n"
        "main: !singleton:named_dict\n"
        '    greeting: "hello"\n'
        "-- endblock main_body\n"
    )
    readme = (
        f"# {name}\n\n"
        f"{description}\n\n"
        "## Usage\n\n"
        "```bash\n"
        "forgather -p . ls                 # the configs\n"
        "forgather -p . pp                 # the rendered default config\n"
        "forgather -p . construct          # build its `main` target\n"
        "forgather -p . construct main.greeting=hi   # ... with an override\n"
        "```\n\n"
        "## Layout\n\n"
        "- `meta.yaml`: the project's name, description and default config.\n"
        "- `templates/project.yaml`: the base every config of this project extends.\n"
        f"- `templates/{config_prefix}/`: the selectable configs.\n"
    )
    return {
        "meta.yaml": meta,
        "templates/project.yaml": base,
        f"templates/{config_prefix}/{default_config}": config,
        "README.md": readme,
    }


@project_app.command("create")
def project_create(
    directory: Annotated[
        Path,
        typer.Argument(metavar="DIR", help="Directory to create the project in (new or empty)."),
    ],
    name: Annotated[
        str | None, typer.Option("--name", help="Project name (default: the directory name).")
    ] = None,
    description: Annotated[str, typer.Option("--description", help="One-line description.")] = "",
    config_prefix: Annotated[
        str, typer.Option("--config-prefix", help="Directory of configs under templates/.")
    ] = "configs",
    default_config: Annotated[
        str, typer.Option("--default-config", help="File name of the first (default) config.")
    ] = "default.yaml",
) -> None:
    """Create a new project with one buildable config."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise common.project_error(
            f"{directory} exists and is not empty; not creating a project there"
        )
    for label, value in (("--config-prefix", config_prefix), ("--default-config", default_config)):
        parts = Path(value).parts
        if not value or Path(value).is_absolute() or ".." in parts:
            raise common.project_error(
                f"{label} must be a relative path inside the project (got {value!r})"
            )
    if not default_config.endswith((".yaml", ".yml")):
        raise common.project_error(f"--default-config must end in .yaml (got {default_config!r})")
    files = project_files(
        name or directory.resolve().name, description, config_prefix, default_config
    )
    for relative, text in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    typer.echo(f"created project {name or directory.resolve().name!r} in {directory}")
    typer.echo(f"try: forgather -p {directory} construct")


@ws_app.callback()
def ws(ctx: typer.Context) -> None:
    """Workspaces. Without a subcommand: print the current workspace root (or "no workspace")."""
    if ctx.invoked_subcommand is not None:
        return
    from forgather.workspace import find_workspace

    root = find_workspace(common.state(ctx).project_dir)
    typer.echo(str(root) if root else "no workspace")


@ws_app.command("create")
def ws_create(
    directory: Annotated[
        Path, typer.Argument(metavar="DIR", help="Directory to hold forgather_workspace/.")
    ],
    name: Annotated[
        str | None, typer.Option("--name", help="Workspace name (default: the directory name).")
    ] = None,
    description: Annotated[str, typer.Option("--description", help="One-line description.")] = "",
    search_path: Annotated[
        list[str] | None,
        typer.Option(
            "--search-path", help="Extra template directory for every project below (repeatable)."
        ),
    ] = None,
) -> None:
    """Create a workspace: DIR/forgather_workspace with defaults shared by the projects below it."""
    from forgather.workspace import WORKSPACE_DIR, create_workspace

    if (directory / WORKSPACE_DIR).exists():
        raise common.project_error(f"{directory / WORKSPACE_DIR} already exists")
    if directory.exists() and not directory.is_dir():
        raise common.project_error(f"{directory} is not a directory")
    try:
        created = create_workspace(
            directory, name or directory.resolve().name, description, list(search_path or [])
        )
    except FileExistsError as error:
        raise common.project_error(str(error)) from error
    typer.echo(f"created workspace {created}")


def register(app: typer.Typer) -> None:
    app.add_typer(project_app)
    app.add_typer(ws_app)
