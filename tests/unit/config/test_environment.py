"""The Jinja environment: globals, filters, StrictUndefined, inheritance and errors that name file:line."""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import sys

import pytest

from forgather.config import errors
from forgather.config.environment import ConfigEnvironment
from forgather.config.jinja_globals import toyaml

pytestmark = pytest.mark.unit


def render(text: str, searchpath=(), **variables) -> str:
    env = ConfigEnvironment(searchpath)
    env.add_template("t", text)
    return env.render("t", **variables).text


def write(directory, name: str, text: str) -> str:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


# ---- basic rendering --------------------------------------------------------------------------


def test_final_newline_of_a_template_is_dropped():
    assert render("a: 1\n") == "a: 1"


def test_trim_blocks_removes_newline_after_a_block_tag():
    assert render("{% if true %}\na: 1\n{% endif %}\nb: 2") == "a: 1\nb: 2"


def test_render_variables_reach_the_template():
    assert render("a: {{ x }}", x=5) == "a: 5"


def test_global_vars_given_to_the_environment_are_visible():
    env = ConfigEnvironment(global_vars={"project_dir": "/p"})
    env.add_template("t", "d: {{ project_dir }}")
    assert env.render("t").text == "d: /p"


# ---- globals ----------------------------------------------------------------------------------


def test_joinpath_joins_parts():
    assert render("{{ joinpath('a', 'b', 'c') }}") == os.path.join("a", "b", "c")


def test_normpath_normalizes():
    assert render("{{ normpath('a//b/../c') }}") == os.path.normpath("a//b/../c")


def test_abspath_makes_absolute():
    assert render("{{ abspath('/a/../b') }}") == os.path.abspath("/a/../b")


def test_relpath_is_relative_to_start():
    assert render("{{ relpath('/a/b/c', '/a') }}") == os.path.join("b", "c")


def test_dirname_and_basename_split_a_path():
    assert render("{{ dirname('/a/b.txt') }} {{ basename('/a/b.txt') }}") == "/a b.txt"


def test_filetime_is_safe_for_file_names():
    stamp = render("{{ filetime() }}")
    assert datetime.datetime.strptime(stamp, "%Y-%m-%dT%H-%M-%S")
    assert ":" not in stamp


def test_isotime_is_iso_8601():
    assert datetime.datetime.fromisoformat(render("{{ isotime() }}"))


def test_now_returns_a_datetime():
    assert render("{{ now().year }}") == str(datetime.datetime.now().year)


def test_hostname_is_this_host():
    assert render("{{ hostname }}") == socket.gethostname()


def test_versions_reports_python():
    assert render("{{ versions.python }}") == ".".join(map(str, sys.version_info[:3]))


def test_versions_reports_an_installed_package():
    import jinja2

    assert render("{{ versions['jinja2'] }}") == jinja2.__version__


def test_versions_reports_missing_packages_as_not_installed():
    assert render("{{ versions['no-such-package-xyz'] }}") == "not installed"


def test_versions_never_imports_torch():
    code = (
        "import sys\n"
        "from forgather.config.graph import load_config_string\n"
        "load_config_string('v: {{ versions.torch }} {{ versions | length }}')\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_project_dir_is_a_project_global(tmp_path):
    from forgather.project import Project

    write(tmp_path, "meta.yaml", "")
    write(tmp_path, "templates/configs/c.yaml", "main: {{ project_dir | toyaml }}\n")
    write(tmp_path, "templates/configs/w.yaml", "main: {{ workspace_root | toyaml }}\n")
    assert Project("c.yaml", tmp_path)() == str(tmp_path.resolve())
    assert Project("w.yaml", tmp_path)() == str(tmp_path.resolve())


def test_joinpath_names_an_undefined_part():
    with pytest.raises(errors.UndefinedVariableError, match="joinpath.*'missing'"):
        render("{{ joinpath('a', missing) }}")


# ---- toyaml -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "null"),
        (True, "true"),
        (False, "false"),
        (3, "3"),
        (1.5, "1.5"),
        ("text", "text"),
        ("a: b", "'a: b'"),
        ("yes", "'yes'"),
        ("1", "'1'"),
        ("", "''"),
        ([1, "a"], "[1, a]"),
        ({"k": 2}, "{k: 2}"),
    ],
)
def test_toyaml_renders_inline_yaml(value, expected):
    assert toyaml(value) == expected


@pytest.mark.parametrize(
    "value", ["a\nb", "x\n", "a: b\nc", "\x85", "a\r\nb", {"k": "a\nb", "n": 1}]
)
def test_toyaml_keeps_line_breaks_on_one_line_and_intact(value):
    from forgather.config.graph import load_config_string

    assert "\n" not in toyaml(value)
    config = load_config_string("m:\n  - v: {{ value | toyaml }}", value=value)
    assert config.build("m") == [{"v": value}]


def test_toyaml_filter_is_available_in_templates():
    assert render("v: {{ [1, 2] | toyaml }}") == "v: [1, 2]"


def test_toyaml_default_replaces_an_undefined_value():
    assert render("v: {{ missing | toyaml('fallback') }}") == "v: fallback"


def test_toyaml_default_none_renders_null():
    assert render("v: {{ missing | toyaml(none) }}") == "v: null"


def test_toyaml_without_default_refuses_an_undefined_value():
    with pytest.raises(errors.UndefinedVariableError, match="missing"):
        render("v: {{ missing | toyaml }}")


def test_toyaml_output_parses_back_to_the_value():
    from forgather.config.graph import load_config_string

    value = {"a": [1, 2.5, "x: y"], "b": None, "c": "true"}
    config = load_config_string("v: {{ value | toyaml }}", value=value)
    assert config.build("v") == value


# ---- StrictUndefined --------------------------------------------------------------------------


def test_undefined_variable_is_an_error():
    with pytest.raises(errors.UndefinedVariableError, match="'nope' is undefined"):
        render("a: {{ nope }}")


def test_undefined_attribute_is_an_error():
    with pytest.raises(errors.UndefinedVariableError):
        render("-- set ns = namespace()\na: {{ ns.missing }}")


def test_default_filter_supplies_undefined_values():
    assert render("a: {{ nope | default(3) }}") == "a: 3"


def test_is_defined_test_works_with_strict_undefined():
    assert render("{{ 'yes' if nope is defined else 'no' }}") == "no"


# ---- inheritance ------------------------------------------------------------------------------


def test_child_block_replaces_parent_block(tmp_path):
    write(tmp_path, "parent.yaml", "a: 1\n-- block body\nb: 2\n-- endblock body\n")
    text = render("-- extends 'parent.yaml'\n[body]\nb: 3\n", [tmp_path])
    assert text.split() == ["a:", "1", "b:", "3"]


def test_super_writes_the_parent_block(tmp_path):
    write(tmp_path, "parent.yaml", "-- block body\nb: 2\n-- endblock body\n")
    text = render("-- extends 'parent.yaml'\n[body]\n== super()\nb: 3\n", [tmp_path])
    assert [line for line in text.splitlines() if line] == ["b: 2", "b: 3"]


def test_include_inserts_another_template(tmp_path):
    write(tmp_path, "part.yaml", "b: 2\n")
    assert render("a: 1\n-- include 'part.yaml'\n\nc: 3", [tmp_path]) == "a: 1\nb: 2\nc: 3"


def test_dynamic_extends_uses_a_variable(tmp_path):
    write(tmp_path, "one.yaml", "which: one\n-- block b\n-- endblock b\n")
    write(tmp_path, "two.yaml", "which: two\n-- block b\n-- endblock b\n")
    text = "-- extends parent\n"
    assert render(text, [tmp_path], parent="two.yaml") == "which: two\n"
    assert render(text, [tmp_path], parent="one.yaml") == "which: one\n"


def test_dynamic_extends_from_a_namespace(tmp_path):
    write(tmp_path, "base.yaml", "base: true\n")
    text = "-- set ns = namespace(parent='base.yaml')\n-- extends ns.parent\n"
    assert render(text, [tmp_path]) == "base: true"


def test_required_block_must_be_overridden(tmp_path):
    path = write(tmp_path, "base.yaml", "a: 1\n-- block body required\n-- endblock body\n")
    with pytest.raises(errors.TemplateRuntimeError, match="Required block 'body'") as info:
        render("-- extends 'base.yaml'\n", [tmp_path])
    assert (info.value.origin.file, info.value.origin.line) == (path, 2)


def test_required_block_is_satisfied_by_a_child(tmp_path):
    write(tmp_path, "base.yaml", "a: 1\n-- block body required\n-- endblock body\n")
    assert render("-- extends 'base.yaml'\n[body]\nb: 2", [tmp_path]) == "a: 1\nb: 2\n"


def test_first_directory_on_the_search_path_wins(tmp_path):
    write(tmp_path, "first/x.yaml", "from: first")
    write(tmp_path, "second/x.yaml", "from: second")
    text = "-- include 'x.yaml'"
    assert render(text, [tmp_path / "first", tmp_path / "second"]) == "from: first"
    assert render(text, [tmp_path / "second", tmp_path / "first"]) == "from: second"


def test_templates_in_subdirectories_are_found_by_relative_name(tmp_path):
    write(tmp_path, "sub/dir/x.yaml", "deep: true")
    assert render("-- include 'sub/dir/x.yaml'", [tmp_path]) == "deep: true"


def test_list_templates_lists_search_path_and_string_templates(tmp_path):
    write(tmp_path, "a.yaml", "")
    write(tmp_path, "configs/b.yaml", "")
    env = ConfigEnvironment([tmp_path])
    env.add_template("mem", "")
    assert {"a.yaml", "configs/b.yaml", "mem"} <= set(env.list_templates())


def test_add_template_replaces_an_earlier_text():
    env = ConfigEnvironment()
    env.add_template("t", "v: 1")
    assert env.render("t").text == "v: 1"
    env.add_template("t", "v: 2")
    assert env.render("t").text == "v: 2"


def test_translated_source_shows_the_jinja_source():
    env = ConfigEnvironment()
    env.add_template("t", "-- set x = 1\n== x")
    loaded = env.translated_source("t")
    assert loaded.text == "-- set x = 1\n== x"
    assert loaded.jinja_source == "{% set x = 1 %}\n{{ x }}"


# ---- errors name the template file and line ---------------------------------------------------


def test_jinja_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.yaml", "a: 1\nb: 2\nc: {{ 1 + }}\n")
    env = ConfigEnvironment([tmp_path])
    with pytest.raises(errors.TemplateSyntaxError) as info:
        env.render("bad.yaml")
    assert (info.value.origin.file, info.value.origin.line) == (path, 3)


def test_jinja_syntax_error_in_a_parent_names_the_parent(tmp_path):
    parent = write(tmp_path, "parent.yaml", "a: 1\n-- if\n")
    write(tmp_path, "child.yaml", "-- extends 'parent.yaml'\n")
    with pytest.raises(errors.TemplateSyntaxError) as info:
        ConfigEnvironment([tmp_path]).render("child.yaml")
    assert (info.value.origin.file, info.value.origin.line) == (parent, 2)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a: 1\n-- block body\nb: 2\n\nc: 3\n", 2),  # a block never closed
        ("-- block body\n-- for x in [1]\nb: {{ x }}\n-- endblock\nc: 3\n", 2),
        ("-- for x in [1]\n-- endfor\n-- if true\na: 1\n-- for y in [2]\n-- endfor\nb\n", 3),
    ],
)
def test_a_tag_never_closed_is_named_where_it_opens(tmp_path, text, line):
    path = write(tmp_path, "open.yaml", text)
    with pytest.raises(errors.TemplateSyntaxError) as info:
        ConfigEnvironment([tmp_path]).render("open.yaml")
    assert (info.value.origin.file, info.value.origin.line) == (path, line)


def test_unclosed_statement_is_a_syntax_error():
    with pytest.raises(errors.TemplateSyntaxError, match="endif"):
        render("-- if true\na: 1")


def test_undefined_variable_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.yaml", "a: 1\n\nb: {{ nope }}\n")
    with pytest.raises(errors.UndefinedVariableError) as info:
        ConfigEnvironment([tmp_path]).render("bad.yaml")
    assert (info.value.origin.file, info.value.origin.line) == (path, 3)


def test_undefined_variable_in_a_parent_block_names_the_parent(tmp_path):
    parent = write(tmp_path, "parent.yaml", "a: 1\n-- block body\nb: {{ nope }}\n-- endblock\n")
    write(tmp_path, "child.yaml", "-- extends 'parent.yaml'\n[body]\n== super()\n")
    with pytest.raises(errors.UndefinedVariableError) as info:
        ConfigEnvironment([tmp_path]).render("child.yaml")
    assert (info.value.origin.file, info.value.origin.line) == (parent, 3)


def test_undefined_variable_in_a_child_block_names_the_child(tmp_path):
    write(tmp_path, "parent.yaml", "a: 1\n-- block body\n-- endblock\n")
    child = write(
        tmp_path, "child.yaml", "-- extends 'parent.yaml'\n[body]\nok: 1\nb: {{ nope }}\n"
    )
    with pytest.raises(errors.UndefinedVariableError) as info:
        ConfigEnvironment([tmp_path]).render("child.yaml")
    assert (info.value.origin.file, info.value.origin.line) == (child, 4)


def test_missing_template_names_the_including_line(tmp_path):
    path = write(tmp_path, "c.yaml", "a: 1\n-- include 'nowhere.yaml'\n")
    with pytest.raises(errors.TemplateNotFoundError, match="nowhere.yaml") as info:
        ConfigEnvironment([tmp_path]).render("c.yaml")
    assert (info.value.origin.file, info.value.origin.line) == (path, 2)


def test_missing_parent_names_the_extends_line(tmp_path):
    path = write(tmp_path, "c.yaml", "## header\n-- extends 'nowhere.yaml'\n")
    with pytest.raises(errors.TemplateNotFoundError) as info:
        ConfigEnvironment([tmp_path]).render("c.yaml")
    assert (info.value.origin.file, info.value.origin.line) == (path, 2)


def test_missing_top_level_template_lists_the_search_path(tmp_path):
    with pytest.raises(errors.TemplateNotFoundError, match=str(tmp_path)):
        ConfigEnvironment([tmp_path]).render("absent.yaml")


def test_runtime_error_in_template_code_is_a_config_error(tmp_path):
    path = write(tmp_path, "c.yaml", "a: 1\nb: {{ 1 // 0 }}\n")
    with pytest.raises(errors.TemplateRuntimeError, match="ZeroDivisionError") as info:
        ConfigEnvironment([tmp_path]).render("c.yaml")
    assert (info.value.origin.file, info.value.origin.line) == (path, 2)


def test_endless_self_include_is_a_config_error(tmp_path):
    write(tmp_path, "loop.yaml", "-- include 'loop.yaml'\n")
    with pytest.raises(errors.TemplateRuntimeError, match="endlessly"):
        ConfigEnvironment([tmp_path]).render("loop.yaml")


def test_sandbox_refuses_unsafe_attribute_access():
    with pytest.raises(errors.ConfigError):
        render("{{ ''.__class__.__mro__[1].__subclasses__() }}")


def test_error_message_has_no_source_markers(tmp_path):
    from forgather.config.preprocess import MARK_OPEN

    with pytest.raises(errors.ConfigError) as info:
        render("a: 1\nb: {{ 'x' + 1 }}\n")
    assert MARK_OPEN not in str(info.value)


# ---- template file access -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ('{% include "/etc/hostname" %}', "template name '/etc/hostname' is absolute"),
        ('{% include "../../../../etc/os-release" %}', "climbs out of the search path"),
        ('{% extends "/etc/os-release" %}', "is absolute"),
        ('{% import "sub/../../secret.yaml" as s %}', "climbs out of the search path"),
    ],
)
def test_templates_outside_the_search_path_are_refused(tmp_path, statement, message):
    templates = tmp_path / "project" / "templates"
    write(templates, "ok.yaml", "ok: 1\n")
    write(tmp_path, "secret.yaml", "password: hunter2\n")  # beside the search path, not on it
    with pytest.raises(errors.TemplateAccessError, match=message) as raised:
        render(statement, [str(templates)])
    assert "hunter2" not in str(raised.value) and "PRETTY_NAME" not in str(raised.value)


def test_templates_on_the_search_path_still_load_from_subdirectories(tmp_path):
    templates = tmp_path / "templates"
    write(templates, "sub/part.yaml", "part: 1\n")
    assert render('{% include "sub/part.yaml" %}', [str(templates)]) == "part: 1"
    assert render('{% include "./sub/part.yaml" %}', [str(templates)]) == "part: 1"
