"""explain, diff, validate."""

from __future__ import annotations

import pytest

from .conftest import body_config, write

pytestmark = pytest.mark.unit


def _line(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.lstrip().startswith(start))


def test_explain_shows_value_origin_and_template_chain(cli, project):
    result = cli("-p", project, "explain", "main.greeting")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.splitlines()[0] == "main.greeting = hello"
    assert "project.yaml:11" in _line(out, "set at:")
    assert "replaced" not in out
    assert _line(out, "templates:").split(": ", 1)[1].startswith("configs/a.yaml -> project.yaml")


def test_explain_shows_override_and_the_template_line_it_replaced(cli, project):
    result = cli("-p", project, "explain", "main.greeting", "main.greeting=hi")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.splitlines()[0] == "main.greeting = hi"
    assert "main.greeting=hi" in _line(out, "set at:")
    replaced = out.split("replaced", 1)[1]
    assert "hello" in replaced and "project.yaml:11" in replaced


def test_explain_shows_dynamic_flag_as_origin(cli, project):
    result = cli("-p", project, "explain", "settings.steps", "--max-steps", "5")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.splitlines()[0] == "settings.steps = 5"
    assert "--max-steps 5" in _line(out, "set at:")
    replaced = out.split("replaced", 1)[1]
    assert "10" in replaced and "project.yaml:9" in replaced


def test_explain_finds_key_written_after_flags(cli, project):
    result = cli("-p", project, "explain", "--max-steps", "5", "settings.steps")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "settings.steps = 5"


def test_explain_shows_which_template_line_overrode_a_parent_value(cli, project):
    result = cli("-p", project, "-t", "b.yaml", "explain", "settings.lr")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "settings.lr = 0.2"
    assert "configs/b.yaml:5" in _line(result.stdout, "set at:")


def test_explain_of_a_missing_key_is_one_error_line(cli, project):
    result = cli("-p", project, "explain", "main.nope")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert "main.nope" in result.stderr and "Traceback" not in result.output


def test_diff_shows_changed_key_with_both_files_and_lines(cli, project):
    result = cli("-p", project, "diff", "a.yaml", "b.yaml")
    assert result.exit_code == 0, result.output
    row = _line(result.stdout, "│ settings.lr")
    assert "0.1" in row and "project.yaml:8" in row
    assert "0.2" in row and "configs/b.yaml:5" in row
    assert "main.greeting" not in result.stdout


def test_diff_applies_the_same_overrides_to_both_configs(cli, project):
    result = cli("-p", project, "diff", "a.yaml", "b.yaml", "settings.lr=0.5")
    assert result.exit_code == 0, result.output
    assert "settings.lr" not in result.stdout
    assert "meta.config_name" in result.stdout  # other differences remain


def test_diff_of_identical_configs_says_no_differences(cli, project):
    result = cli("-p", project, "diff", "a.yaml", "a.yaml")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "no differences"


def test_diff_with_a_missing_config_fails(cli, project):
    result = cli("-p", project, "diff", "a.yaml", "zz.yaml")
    assert result.exit_code == 1
    assert "zz.yaml" in result.stderr and result.stdout == ""


def test_validate_counts_callable_nodes_of_a_good_config(cli, project):
    result = cli("-p", project, "validate")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "OK: 3 nodes checked"  # meta, dynamic_args, main


def test_validate_constructs_nothing(cli, project):
    marker = project / "called"
    write(
        project / "mod.py", f"def touch():\n    open({str(marker)!r}, 'w').close()\n    return 1\n"
    )
    write(
        project / "templates" / "configs" / "t.yaml",
        body_config(f"main: !singleton:{project / 'mod.py'}:touch []"),
    )
    result = cli("-p", project, "-t", "t.yaml", "validate")
    assert result.exit_code == 0, result.output
    assert not marker.exists()
    assert cli("-p", project, "-t", "t.yaml", "construct").exit_code == 0
    assert marker.exists()


def test_validate_reports_every_problem_one_line_each(cli, project):
    write(
        project / "templates" / "configs" / "two.yaml",
        body_config(
            "one: !singleton:textwrap:dedent\n    text: x\n    bogus: 1\n"
            "main: !singleton:no_such_module_xyz:f []"
        ),
    )
    result = cli("-p", project, "-t", "two.yaml", "validate")
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 2
    assert all(line.startswith("error: ") for line in lines)
    assert "two.yaml:5" in lines[0] and "bogus" in lines[0]  # the line of the unknown key
    assert "two.yaml:6" in lines[1] and "no_such_module_xyz" in lines[1]
