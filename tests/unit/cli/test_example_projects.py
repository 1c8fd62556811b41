"""Every config of every example project renders and validates (imports resolve, arguments fit), so
an example a user copies is never broken; the projects' listings show no errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from forgather.project import MetaConfig

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
PROJECTS = sorted(p.parent for p in EXAMPLES.rglob("meta.yaml") if "output_models" not in p.parts)
# Tour configs that show `!var` values a Python caller passes (tests/unit/config/test_config_tour.py
# builds them with values); the command line has none to give.
NEEDS_CALLER_VARS = {("config_tour", "04_vars.yaml"), ("config_tour", "11_meta.yaml")}
CONFIGS = [
    (project, name)
    for project in PROJECTS
    for name in MetaConfig.load(project).config_names()
    if (project.name, name) not in NEEDS_CALLER_VARS
]


def test_the_walk_finds_the_example_projects():
    names = {p.relative_to(EXAMPLES).as_posix() for p in PROJECTS}
    assert {"tiny_experiments/tiny_llama", "tiny_experiments/checkpointing"} <= names
    assert len(CONFIGS) >= 20


@pytest.mark.parametrize("project,name", CONFIGS, ids=[f"{p.name}/{n}" for p, n in CONFIGS])
def test_every_example_config_validates(cli, project, name):
    result = cli("-p", project, "-t", name, "validate")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("project", PROJECTS, ids=[p.name for p in PROJECTS])
def test_every_example_project_lists_without_errors(cli, project):
    result = cli("-p", project, "ls")
    assert result.exit_code == 0, result.output
    assert "ERROR" not in result.stdout
