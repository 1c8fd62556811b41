"""User errors: exit status 1, one red line on stderr naming where, no output, traceback only on request."""

from __future__ import annotations

import pytest

from .conftest import body_config, write

pytestmark = pytest.mark.unit

# name -> (config text, command, what the error line must name besides the kind)
CASES = {
    "yaml_syntax": (body_config("main: [1, 2"), ["construct"], ["bad.yaml:3", "YAML syntax error"]),
    "jinja_syntax": (body_config("-- if x"), ["pp"], ["bad.yaml:3", "template syntax error"]),
    "undefined_variable": (
        body_config("main: {{ nope }}"),
        ["pp"],
        ["bad.yaml:3", "undefined variable", "nope"],
    ),
    "unknown_tag": (body_config("main: !bogus 1"), ["targets"], ["bad.yaml:3", "!bogus"]),
    "bad_import_spec": (
        body_config("main: !singleton:no_such_module_xyz:f []"),
        ["construct"],
        ["bad.yaml:3", "bad import spec", "no_such_module_xyz"],
    ),
    "missing_extends_template": (
        '-- extends "missing.yaml"\n',
        ["pp"],
        ["bad.yaml:1", "template not found", "missing.yaml"],
    ),
    "duplicate_name": (
        body_config("a: !dict:@x\n    k: 1\nmain: !dict:@x\n    k: 2"),
        ["graph"],
        ["bad.yaml:5", "duplicate name", "@x"],
    ),
    "unbound_var": (
        body_config("main: !var foo"),
        ["construct"],
        ["bad.yaml:3", "unbound !var", "foo"],
    ),
    "unknown_keyword_construct": (
        body_config('main: !singleton:textwrap:dedent\n    text: "x"\n    bogus: 1'),
        ["construct"],
        ["bad.yaml:5", "bad arguments", "bogus"],  # the line of the unknown key
    ),
    "unknown_keyword_validate": (
        body_config('main: !singleton:textwrap:dedent\n    text: "x"\n    bogus: 1'),
        ["validate"],
        ["bad.yaml:5", "bogus"],  # the line of the unknown key
    ),
    "override_matches_nothing": (None, ["construct", "main.nope=1"], ["main.nope", "bad override"]),
    "unknown_dynamic_flag": (None, ["construct", "--nope", "3"], ["--nope", "--max-steps"]),
    "bad_dynamic_flag_value": (None, ["construct", "--max-steps", "x"], ["--max-steps", "'x'"]),
    "unknown_target": (None, ["construct", "--target", "nope"], ["nope", "unknown target"]),
}


def _args(project, case):
    text, command, _ = CASES[case]
    config = []
    if text is not None:
        write(project / "templates" / "configs" / "bad.yaml", text)
        config = ["-t", "bad.yaml"]
    return ["-p", project, *config, *command]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_error_line_naming_where_and_no_traceback(cli, project, case):
    result = cli(*_args(project, case))
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for needle in CASES[case][2]:
        assert needle in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_with_traceback_flag_shows_the_traceback(cli, project, case):
    result = cli("--traceback", *_args(project, case))
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: ")
    assert result.stdout == ""


def test_missing_project_is_an_error(cli, tmp_path):
    result = cli("-p", tmp_path, "construct")
    assert result.exit_code == 1
    assert "no meta.yaml" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_failing_call_in_construct_is_a_build_error_naming_the_line(cli, project):
    write(
        project / "templates" / "configs" / "bad.yaml",
        body_config('main: !singleton:int ["not a number"]'),
    )
    result = cli("-p", project, "-t", "bad.yaml", "construct")
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1
    assert "bad.yaml:3" in result.stderr and "ValueError" in result.stderr
    assert "Traceback" not in result.output


def test_a_full_disk_says_what_to_do():
    import errno
    import os

    from forgather.errors import describe_os_error

    error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/out/checkpoints/x.distcp")
    assert describe_os_error(error) == (
        "/out/checkpoints/x.distcp: No space left on device (the disk is full: free space, then "
        "resume; complete checkpoints are kept)"
    )
