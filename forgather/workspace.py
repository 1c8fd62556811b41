"""Workspaces: a directory holding `forgather_workspace/`, shared by the projects below it."""

from __future__ import annotations

import os
from pathlib import Path

WORKSPACE_DIR = "forgather_workspace"
PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATELIB_DIR = PACKAGE_DIR / "templatelib"
FORGATHER_DIR = PACKAGE_DIR.parent


def find_workspace(start: str | os.PathLike) -> Path | None:
    """The nearest directory at or above `start` that holds `forgather_workspace/`."""
    path = Path(start).resolve()
    for candidate in (path, *path.parents):
        if (candidate / WORKSPACE_DIR).is_dir():
            return candidate
    return None


def find_project_dir(start: str | os.PathLike) -> Path | None:
    """The nearest directory at or above `start` that holds a `meta.yaml`."""
    path = Path(start).resolve()
    for candidate in (path, *path.parents):
        if (candidate / "meta.yaml").is_file():
            return candidate
    return None


def user_templates_dir() -> Path:
    """`~/.config/forgather/templates`: templates every project of this user can see."""
    import platformdirs

    return Path(platformdirs.user_config_dir("forgather")) / "templates"


def meta_searchpath(project_dir: Path, workspace: Path | None) -> list[str]:
    """Where `meta.yaml` finds the templates it extends, in order."""
    paths = [project_dir]
    if workspace is not None:
        paths.append(workspace / WORKSPACE_DIR)
    user = user_templates_dir()
    if user.is_dir():
        paths.append(user)
    paths.append(TEMPLATELIB_DIR / "base")
    return [str(p) for p in paths]


def create_workspace(
    directory: str | os.PathLike,
    name: str,
    description: str = "",
    search_paths: list[str] | None = None,
) -> Path:
    """Create `forgather_workspace/` in `directory`; refuses to overwrite an existing one."""
    root = Path(directory).resolve()
    ws = root / WORKSPACE_DIR
    if ws.exists():
        raise FileExistsError(f"{ws} already exists")
    ws.mkdir(parents=True)
    (ws / "README.md").write_text(f"# {name}\n\n{description}\n", encoding="utf-8")
    extra = "".join(f'  - "{path}"\n' for path in search_paths or [])
    (ws / "meta_defaults.yaml").write_text(
        "## Workspace defaults for every project's meta.yaml below this directory.\n"
        '-- extends "forgather_meta_defaults.yaml"\n'
        "-- block searchdir_common\n"
        "  - \"{{ joinpath(workspace_root, 'forgather_workspace') }}\"\n"
        f"{extra}"
        "== super()\n"
        "-- endblock searchdir_common\n",
        encoding="utf-8",
    )
    return ws
