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


PROJECT_TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "templatelib" / "projects"
"""Project templates: one directory each, copied with @@NAME@@-style placeholders filled."""
MINIMAL = "minimal"


def project_templates() -> dict[str, str]:
    """Project template names and their one-line descriptions (`minimal` is built in)."""
    found = {MINIMAL: "One config that builds a dictionary: the smallest project to start from."}
    for directory in sorted(PROJECT_TEMPLATES_DIR.iterdir()):
        about = directory / "PROJECT.md"
        if about.is_file():
            found[directory.name] = " ".join(about.read_text(encoding="utf-8").split())
    return found


def template_project_files(template: str, name: str, description: str) -> dict[str, str]:
    """The files of a new project made from project template `template`, by relative path."""
    root = PROJECT_TEMPLATES_DIR / template
    text = description or project_templates()[template]
    values = {
        "@@NAME@@": _yaml_str(name),
        "@@DESCRIPTION@@": _yaml_str(text),
        "@@TITLE@@": name,
        "@@DESCRIPTION_TEXT@@": text,
    }
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != "PROJECT.md":
            content = path.read_text(encoding="utf-8")
            for key, value in values.items():
                content = content.replace(key, value)
            files[path.relative_to(root).as_posix()] = content
    return files


def _check_new_directory(directory: Path) -> None:
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise common.project_error(
            f"{directory} exists and is not empty; not creating a project there"
        )


@project_app.command("create")
def project_create(
    directory: Annotated[
        Path,
        typer.Argument(metavar="DIR", help="Directory to create the project in (new or empty)."),
    ],
    template: Annotated[
        str,
        typer.Option(
            "--template",
            help="Project template: minimal (one buildable config), lm-training (train a model "
            "from scratch), finetune (fine-tune a model on text or conversations). "
            "`forgather project templates` describes them.",
        ),
    ] = MINIMAL,
    name: Annotated[
        str | None, typer.Option("--name", help="Project name (default: the directory name).")
    ] = None,
    description: Annotated[str, typer.Option("--description", help="One-line description.")] = "",
    config_prefix: Annotated[
        str,
        typer.Option(
            "--config-prefix", help="Directory of configs under templates/ (minimal only)."
        ),
    ] = "configs",
    default_config: Annotated[
        str,
        typer.Option(
            "--default-config", help="File name of the first (default) config (minimal only)."
        ),
    ] = "default.yaml",
) -> None:
    """Create a new project from a project template, with a default config that builds (and, for
    the training templates, trains: `forgather -p DIR train`)."""
    templates = project_templates()
    if template not in templates:
        raise common.project_error(
            f"--template: no project template {template!r} (one of {', '.join(templates)})"
        )
    _check_new_directory(directory)
    project_name = name or directory.resolve().name
    if template == MINIMAL:
        for label, value in (
            ("--config-prefix", config_prefix),
            ("--default-config", default_config),
        ):
            parts = Path(value).parts
            if not value or Path(value).is_absolute() or ".." in parts:
                raise common.project_error(
                    f"{label} must be a relative path inside the project (got {value!r})"
                )
        if not default_config.endswith((".yaml", ".yml")):
            raise common.project_error(
                f"--default-config must end in .yaml (got {default_config!r})"
            )
        files = project_files(project_name, description, config_prefix, default_config)
        hint = "construct"
    else:
        if (config_prefix, default_config) != ("configs", "default.yaml"):
            raise common.project_error(
                f"--config-prefix and --default-config apply to the minimal template only "
                f"({template} has its own configs)"
            )
        files = template_project_files(template, project_name, description)
        hint = "ls"
    for relative, text in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    typer.echo(f"created project {project_name!r} ({template}) in {directory}")
    typer.echo(f"try: forgather -p {directory} {hint}")


@project_app.command("templates")
def project_templates_command() -> None:
    """List the project templates `project create --template` takes."""
    templates = project_templates()
    width = max(len(name) for name in templates)
    common.echo_text("\n".join(f"{n.ljust(width)}  {d}" for n, d in templates.items()))


@project_app.command("show")
def project_show(ctx: typer.Context) -> None:
    """Show the project (-p): name, description, directories, search path, and its configs with
    their names and descriptions (the default one marked x)."""
    from forgather.cli.inspect import meta, project_listing

    meta(ctx)
    out = common.console()
    out.print("")
    for line in project_listing(common.find_project(common.state(ctx).project_dir), False):
        out.print(line, soft_wrap=True)


@project_app.command("new-config")
def project_new_config(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="The new config's file name (.yaml added).")
    ],
    base: Annotated[
        str | None,
        typer.Option("--from", help="The config it extends (default: the project's default)."),
    ] = None,
    description: Annotated[str, typer.Option("--description", help="One-line description.")] = "",
) -> None:
    """Add a config to the project (-p) that extends an existing one and changes nothing yet:
    edit its blocks (`== super()` then the keys that change)."""
    info = common.load_meta(ctx)
    file_name = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
    if Path(file_name).is_absolute() or ".." in Path(file_name).parts:
        raise common.project_error(f"NAME must be a file name inside the project (got {name!r})")
    base = base or info.default_config
    if base is None or base not in info.config_names():
        known = ", ".join(info.config_names()) or "none"
        raise common.project_error(f"--from: no config {base!r} in the project (configs: {known})")
    target = info.project_dir / "templates" / info.config_prefix / file_name
    if target.exists() or file_name in info.config_names():
        raise common.project_error(f"{target}: a config of that name exists")
    title = Path(file_name).stem.replace("_", " ").replace("-", " ").capitalize()
    text = (
        f"## {file_name}: {description or f'a variant of {base}'}.\n"
        f'-- extends "{info.config_prefix}/{base}"\n'
        "\n"
        "-- block config_metadata\n"
        "    == super()\n"
        f"    -- set ns.config_name = {_jinja_str(title)}\n"
        f"    -- set ns.config_description = {_jinja_str(description or f'A variant of {base}')}\n"
        "-- endblock config_metadata\n"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    typer.echo(f"created {target} (extends {base})")
    typer.echo(f"try: forgather -p {info.project_dir} -t {file_name} pp")


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
