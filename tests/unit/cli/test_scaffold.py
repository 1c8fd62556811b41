"""project create, ws create, ws."""

from __future__ import annotations

import ast

import pytest

pytestmark = pytest.mark.unit


def test_project_create_writes_a_project_that_constructs(cli, tmp_path):
    directory = tmp_path / "new_project"
    result = cli("project", "create", "--name", "Fresh", "--description", "A new one", directory)
    assert result.exit_code == 0, result.output
    for relative in (
        "meta.yaml",
        "README.md",
        "templates/project.yaml",
        "templates/configs/default.yaml",
    ):
        assert (directory / relative).is_file(), relative
    assert '-- extends "meta_defaults.yaml"' in (directory / "meta.yaml").read_text()
    assert '-- extends "config_type.yaml"' in (directory / "templates/project.yaml").read_text()

    built = cli("-p", directory, "construct")
    assert built.exit_code == 0, built.output
    assert ast.literal_eval(built.stdout) == {"greeting": "hello"}

    listing = cli("-p", directory, "ls")
    assert listing.exit_code == 0, listing.output
    assert listing.stdout.splitlines()[0] == "Fresh: A new one"
    assert "[x] default.yaml" in listing.stdout
    assert "ERROR" not in listing.stdout

    assert cli("-p", directory, "validate").exit_code == 0


def test_project_create_honours_prefix_and_default_config(cli, tmp_path):
    directory = tmp_path / "p"
    result = cli(
        "project",
        "create",
        "--config-prefix",
        "experiments",
        "--default-config",
        "base.yaml",
        directory,
    )
    assert result.exit_code == 0, result.output
    assert (directory / "templates/experiments/base.yaml").is_file()
    meta = cli("-p", directory, "meta")
    assert "config prefix:  experiments" in meta.stdout
    assert "default config: base.yaml" in meta.stdout
    built = cli("-p", directory, "construct", "main.greeting=hi")
    assert built.exit_code == 0, built.output
    assert ast.literal_eval(built.stdout) == {"greeting": "hi"}


def test_project_create_into_empty_existing_dir_works(cli, tmp_path):
    directory = tmp_path / "empty"
    directory.mkdir()
    assert cli("project", "create", directory).exit_code == 0
    assert (directory / "meta.yaml").is_file()


def test_project_create_into_non_empty_dir_fails_and_writes_nothing(cli, tmp_path):
    directory = tmp_path / "busy"
    directory.mkdir()
    (directory / "notes.txt").write_text("mine")
    result = cli("project", "create", directory)
    assert result.exit_code == 1
    assert "not empty" in result.stderr and len(result.stderr.splitlines()) == 1
    assert result.stdout == ""
    assert sorted(p.name for p in directory.iterdir()) == ["notes.txt"]


def test_ws_create_makes_a_workspace_that_projects_below_find(cli, tmp_path):
    result = cli("ws", "create", "--name", "Lab", "--search-path", "/opt/templates", tmp_path)
    assert result.exit_code == 0, result.output
    defaults = (tmp_path / "forgather_workspace" / "meta_defaults.yaml").read_text()
    assert "/opt/templates" in defaults

    project = tmp_path / "proj"
    assert cli("project", "create", project).exit_code == 0
    meta = cli("-p", project, "meta")
    assert meta.exit_code == 0, meta.output
    assert f"workspace root: {tmp_path}" in meta.stdout
    assert str(tmp_path / "forgather_workspace") in meta.stdout
    assert cli("-p", project, "construct").exit_code == 0

    shown = cli("-p", project, "ws")
    assert shown.exit_code == 0
    assert shown.stdout.strip() == str(tmp_path)


def test_ws_create_refuses_an_existing_workspace(cli, tmp_path):
    assert cli("ws", "create", tmp_path).exit_code == 0
    before = (tmp_path / "forgather_workspace" / "meta_defaults.yaml").read_text()
    result = cli("ws", "create", "--name", "Other", tmp_path)
    assert result.exit_code == 1
    assert "already exists" in result.stderr and result.stdout == ""
    assert (tmp_path / "forgather_workspace" / "meta_defaults.yaml").read_text() == before


def test_ws_without_subcommand_says_no_workspace(cli, tmp_path):
    result = cli("-p", tmp_path, "ws")
    assert result.exit_code == 0
    assert result.stdout.strip() == "no workspace"


# ---- project templates, new-config, show ---------------------------------------------------------


@pytest.mark.parametrize(
    "template,configs,default",
    [
        ("lm-training", ["train.yaml"], "train.yaml"),
        ("finetune", ["chat.yaml", "finetune.yaml"], "finetune.yaml"),
    ],
)
def test_project_templates_create_projects_whose_configs_validate(
    cli, tmp_path, template, configs, default
):
    directory = tmp_path / template
    made = cli("project", "create", "--template", template, "--name", 'My "LM"', directory)
    assert made.exit_code == 0, made.output
    assert not (directory / "PROJECT.md").exists()  # the template's own description stays behind
    listing = cli("-p", directory, "ls")
    assert listing.exit_code == 0, listing.output
    assert listing.stdout.startswith('My "LM": ')  # quoted safely into meta.yaml
    assert f"[x] {default}" in listing.stdout and "ERROR" not in listing.stdout
    readme = (directory / "README.md").read_text()
    assert readme.startswith('# My "LM"\n') and "@@" not in readme
    for config in configs:
        result = cli("-p", directory, "-t", config, "validate")
        assert result.exit_code == 0, (config, result.output)


def test_project_templates_lists_every_template_with_its_description(cli):
    result = cli("project", "templates")
    assert result.exit_code == 0, result.output
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == ["minimal", "finetune", "lm-training"]
    assert "from scratch" in result.stdout


def test_an_unknown_project_template_is_one_error_naming_the_choices(cli, tmp_path):
    result = cli("project", "create", "--template", "gan", tmp_path / "p")
    assert result.exit_code != 0
    assert "--template: no project template 'gan' (one of minimal, finetune, lm-training)" in (
        result.output
    )
    assert not (tmp_path / "p").exists()


def test_new_config_extends_the_default_and_shows_in_the_listing(cli, tmp_path):
    directory = tmp_path / "p"
    assert cli("project", "create", directory).exit_code == 0
    made = cli("-p", directory, "project", "new-config", "variant", "--description", "Louder")
    assert made.exit_code == 0, made.output
    text = (directory / "templates/configs/variant.yaml").read_text()
    assert '-- extends "configs/default.yaml"' in text
    built = cli("-p", directory, "-t", "variant.yaml", "construct")
    assert built.exit_code == 0, built.output
    assert ast.literal_eval(built.stdout) == {"greeting": "hello"}  # inherited unchanged
    shown = cli("-p", directory, "project", "show")
    assert shown.exit_code == 0, shown.output
    assert "default config: default.yaml" in shown.stdout
    assert "[ ] variant.yaml" in shown.stdout and "Louder" in shown.stdout

    again = cli("-p", directory, "project", "new-config", "variant")
    assert again.exit_code != 0 and "a config of that name exists" in again.output
    missing = cli("-p", directory, "project", "new-config", "x", "--from", "nope.yaml")
    assert missing.exit_code != 0
    assert "--from: no config 'nope.yaml' in the project (configs: default.yaml" in missing.output
    escape = cli("-p", directory, "project", "new-config", "../out")
    assert escape.exit_code != 0 and "NAME must be a file name inside the project" in escape.output
