"""Small projects built in tmp dirs, and a runner for the `forgather` CLI."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from forgather.cli.main import app

META = """\
-- extends "meta_defaults.yaml"
-- block configs
name: Demo
description: A demo project
config_prefix: configs
default_config: a.yaml
-- endblock configs
"""

# Line numbers matter: tests name them (settings.lr is line 8, settings.steps line 9,
# main.greeting line 11).
PROJECT = """\
-- extends "config_type.yaml"
-- block config_metadata
    == super()
    -- set ns.config_name = "Project base"
-- endblock config_metadata
-- block main_body
settings:
    lr: 0.1
    steps: {{ max_steps | default(10) }}
main: !singleton:named_dict
    greeting: "hello"
    steps: {{ max_steps | default(10) }}
-- endblock main_body
"""

CONFIG_A = """\
-- extends "project.yaml"
-- block config_metadata
    == super()
    -- set ns.config_name = "Config A"
    -- set ns.config_description = "first config"
-- endblock config_metadata
-- block dynamic_args
    max_steps:
        names: "--max-steps"
        type: "int"
        help: "Stop after this many steps"
-- endblock dynamic_args
"""

# settings.lr is line 5 here.
CONFIG_B = """\
-- extends "project.yaml"
-- block main_body
== super()
settings:
    lr: 0.2
    steps: 10
-- endblock main_body
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def body_config(main_body: str) -> str:
    """A config extending project.yaml whose main_body is `main_body` (it starts on line 3)."""
    return f'-- extends "project.yaml"\n-- block main_body\n{main_body}\n-- endblock main_body\n'


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project with configs a.yaml (default, declares --max-steps) and b.yaml."""
    root = tmp_path / "demo"
    write(root / "meta.yaml", META)
    write(root / "templates" / "project.yaml", PROJECT)
    write(root / "templates" / "configs" / "a.yaml", CONFIG_A)
    write(root / "templates" / "configs" / "b.yaml", CONFIG_B)
    return root


@pytest.fixture
def cli():
    """`cli(*args)` runs `forgather` in-process and returns the click Result."""
    runner = CliRunner()

    def invoke(*args: str | Path) -> Result:
        return runner.invoke(app, [str(a) for a in args])

    return invoke
