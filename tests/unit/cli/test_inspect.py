"""ls, meta, targets, tlist, trefs, pp, graph, code, construct: happy paths, overrides and flags."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from .conftest import body_config, write

pytestmark = pytest.mark.unit


def test_version_prints_the_package_version(cli):
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.startswith("forgather ")


def test_importing_the_cli_does_not_import_torch_or_the_config_engine():
    code = (
        "import sys, forgather.cli.main; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('forgather.config')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_of_a_config_command_documents_overrides_and_flags(cli):
    result = cli("construct", "--help")
    assert result.exit_code == 0
    assert "--target" in result.stdout
    assert "a.b=VALUE" in result.stdout and "--max-steps" in result.stdout


def test_ls_lists_project_and_configs_with_default_marked(cli, project):
    result = cli("-p", project, "ls")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "Demo: A demo project"
    assert any(line.split()[:3] == ["[x]", "a.yaml", "Config"] for line in lines)
    a_line = next(line for line in lines if "a.yaml" in line)
    assert "Config A" in a_line and "first config" in a_line
    b_line = next(line for line in lines if "b.yaml" in line)
    assert "[ ]" in b_line and "Project base" in b_line


def test_ls_shows_parse_error_for_a_broken_config_and_still_succeeds(cli, project):
    write(project / "templates" / "configs" / "broken.yaml", body_config("main: [1, 2"))
    result = cli("-p", project, "ls")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if "broken.yaml" in line)
    assert "PARSE ERROR:" in line and "broken.yaml:3" in line


def test_ls_tolerates_configs_without_a_meta_target(cli, project):
    write(project / "templates" / "configs" / "bare.yaml", "main: !singleton:named_dict {}\n")
    result = cli("-p", project, "ls")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if "bare.yaml" in line)
    assert "ERROR" not in line


def test_ls_recursive_finds_projects_below_and_skips_hidden_and_output_dirs(cli, project, tmp_path):
    for skipped in (".hidden", "output_models"):
        write(tmp_path / skipped / "meta.yaml", "name: Skipped\n")
    write(tmp_path / "other" / "meta.yaml", "name: Other\n")
    result = cli("ls", "-r", tmp_path)
    assert result.exit_code == 0, result.output
    assert "Demo: A demo project" in result.stdout
    assert "Other" in result.stdout
    assert "Skipped" not in result.stdout


def test_ls_of_a_directory_without_project_fails(cli, tmp_path):
    result = cli("ls", tmp_path)
    assert result.exit_code == 1
    assert "no meta.yaml" in result.stderr
    assert result.stdout == ""


def test_meta_shows_project_settings_and_search_path(cli, project):
    result = cli("-p", project, "meta")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Demo" in out and "A demo project" in out
    assert f"project dir:    {project}" in out
    assert "workspace root: none" in out
    assert "default config: a.yaml" in out
    assert f"    {project / 'templates'}" in out.splitlines()
    assert "    b.yaml" in out.splitlines()


def test_project_dir_is_found_by_searching_upward(cli, project):
    result = cli("-p", project / "templates" / "configs", "targets")
    assert result.exit_code == 0, result.output
    assert "main" in result.stdout.splitlines()


def test_targets_lists_top_level_targets_one_per_line(cli, project):
    result = cli("-p", project, "targets")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["meta", "dynamic_args", "settings", "main"]


def test_targets_reflects_added_and_deleted_keys(cli, project):
    result = cli("-p", project, "targets", "+extra=1", "~settings")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["meta", "dynamic_args", "main", "extra"]


def test_tlist_files_lists_each_template_with_its_path(cli, project):
    result = cli("-p", project, "tlist", "--format", "files")
    assert result.exit_code == 0, result.output
    rows = dict(line.split() for line in result.stdout.splitlines())
    assert rows["configs/a.yaml"] == str(project / "templates" / "configs" / "a.yaml")
    assert rows["config_type.yaml"].endswith("templatelib/base/config_type.yaml")


def test_tlist_md_groups_templates_by_search_directory(cli, project):
    result = cli("-p", project, "tlist")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"- {project / 'templates'}"
    assert f"    - [project.yaml]({project / 'templates' / 'project.yaml'})" in lines
    assert any(line.startswith("- ") and line.endswith("templatelib/base") for line in lines)


def test_trefs_tree_shows_the_extends_chain(cli, project):
    result = cli("-p", project, "trefs")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("configs/a.yaml")
    order = ["configs/a.yaml", "project.yaml", "config_type.yaml", "inc/formatting.jinja"]
    positions = [next(i for i, line in enumerate(lines) if name in line) for name in order]
    assert positions == sorted(positions)
    indents = [len(lines[p]) - len(lines[p].lstrip(" │└├─")) for p in positions]
    assert indents == sorted(indents) and len(set(indents)) == len(indents)


def test_trefs_files_lists_used_templates_with_files(cli, project):
    result = cli("-p", project, "-t", "b.yaml", "trefs", "--format", "files")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows[0] == ["configs/b.yaml", str(project / "templates" / "configs" / "b.yaml")]
    assert [row[0] for row in rows[1:3]] == ["project.yaml", "config_type.yaml"]


def test_pp_prints_rendered_text_exactly(cli, project):
    from forgather.project import load_project

    expected = load_project(project, "", []).config.rendered.text
    result = cli("-p", project, "pp")
    assert result.exit_code == 0, result.output
    assert result.stdout.rstrip("\n") == expected.rstrip("\n")


def test_pp_does_not_interpret_rich_markup(cli, project):
    write(project / "templates" / "configs" / "m.yaml", body_config('main: "[bold]x[/bold]"'))
    result = cli("-p", project, "-t", "m.yaml", "pp")
    assert result.exit_code == 0, result.output
    assert 'main: "[bold]x[/bold]"' in result.stdout


def test_pp_with_flag_renders_the_flag_value(cli, project):
    result = cli("-p", project, "pp", "--max-steps", "42")
    assert result.exit_code == 0, result.output
    assert "    steps: 42" in result.stdout


def test_pp_debug_shows_translated_sources_with_file_line_numbers(cli, project):
    result = cli("-p", project, "pp", "--debug")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"configs/a.yaml  ({project / 'templates' / 'configs' / 'a.yaml'})" in out
    assert '1: {% extends "project.yaml" %}' in out
    assert "10: main: !singleton:named_dict" in out  # project.yaml line 10


def test_graph_yaml_shows_tags_and_values(cli, project):
    result = cli("-p", project, "graph")
    assert result.exit_code == 0, result.output
    assert "main: !dict" in result.stdout
    assert "greeting: hello" in result.stdout


def test_graph_python_is_valid_code_building_all_targets(cli, project):
    result = cli("-p", project, "graph", "--format", "python")
    assert result.exit_code == 0, result.output
    ast.parse(result.stdout)
    assert "def construct" in result.stdout and '"greeting": "hello"' in result.stdout


def test_graph_repr_shows_graph_nodes(cli, project):
    result = cli("-p", project, "graph", "--format", "repr")
    assert result.exit_code == 0, result.output
    assert "SingletonNode('named_dict'" in result.stdout


def test_code_generates_a_construct_function_for_the_target(cli, project):
    result = cli("-p", project, "code", "--target", "main")
    assert result.exit_code == 0, result.output
    namespace: dict = {}
    exec(compile(result.stdout, "<generated>", "exec"), namespace)
    assert namespace["construct"]() == {"greeting": "hello", "steps": 10}


def test_construct_builds_main_and_prints_it(cli, project):
    result = cli("-p", project, "construct")
    assert result.exit_code == 0, result.output
    assert ast.literal_eval(result.stdout) == {"greeting": "hello", "steps": 10}


def test_construct_selects_config_and_target(cli, project):
    result = cli("-p", project, "-t", "b.yaml", "construct", "--target", "settings")
    assert result.exit_code == 0, result.output
    assert ast.literal_eval(result.stdout) == {"lr": 0.2, "steps": 10}


def test_construct_override_changes_the_result_with_yaml_typed_value(cli, project):
    result = cli("-p", project, "construct", "main.greeting=hi", "main.steps=[1, 2]")
    assert result.exit_code == 0, result.output
    assert ast.literal_eval(result.stdout) == {"greeting": "hi", "steps": [1, 2]}


def test_construct_add_and_delete_overrides(cli, project):
    result = cli("-p", project, "construct", "+main.extra=true", "~main.steps")
    assert result.exit_code == 0, result.output
    assert ast.literal_eval(result.stdout) == {"greeting": "hello", "extra": True}


def test_construct_dynamic_flag_after_target_option_changes_the_result(cli, project):
    result = cli("-p", project, "construct", "--target", "main", "--max-steps", "5")
    assert result.exit_code == 0, result.output
    assert ast.literal_eval(result.stdout) == {"greeting": "hello", "steps": 5}


def test_construct_flag_and_override_combine(cli, project):
    result = cli("-p", project, "construct", "--max-steps=7", "main.greeting=hey")
    assert result.exit_code == 0, result.output
    assert ast.literal_eval(result.stdout) == {"greeting": "hey", "steps": 7}


def test_construct_call_calls_the_built_object(cli, project):
    write(
        project / "templates" / "configs" / "p.yaml",
        body_config("main: !partial:named_dict\n    greeting: hi"),
    )
    result = cli("-p", project, "-t", "p.yaml", "construct", "--call")
    assert result.exit_code == 0, result.output
    assert ast.literal_eval(result.stdout) == {"greeting": "hi"}


def test_construct_call_of_a_non_callable_is_an_error(cli, project):
    result = cli("-p", project, "construct", "--call")
    assert result.exit_code == 1
    assert "not callable" in result.stderr and result.stdout == ""
