"""explain, format_value and diff_configs: where values come from, and how two configs differ."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table

from forgather.cli.explain import render_diff
from forgather.config import errors
from forgather.config.environment import ConfigEnvironment
from forgather.config.explain import (
    DiffEntry,
    Explanation,
    diff_configs,
    explain,
    format_origin,
    format_value,
    render_explanation,
    template_chain,
)
from forgather.config.graph import Config, load_config, load_config_string
from forgather.config.origin import Origin
from forgather.config.overrides import apply_overrides

pytestmark = pytest.mark.unit


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def _load(tmp_path: Path, name: str, text: str) -> Config:
    _write(tmp_path, name, text)
    return load_config(ConfigEnvironment([tmp_path]), name)


def _render(renderable) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


# ---- explain ---------------------------------------------------------------------------------


def test_explain_value_overridden_by_later_duplicate_key_shows_both_lines(tmp_path):
    config = _load(tmp_path, "c.yaml", "lr: 0.1\nsteps: 5\nlr: 0.01\n")
    expl = explain(config, "lr")
    file = str(tmp_path / "c.yaml")
    assert expl.value == 0.01
    assert (expl.origin.file, expl.origin.line) == (file, 3)
    assert [(o.file, o.line, old) for o, old in expl.overrode] == [(file, 1, 0.1)]
    text = render_explanation(expl)
    assert "lr = 0.01" in text
    assert f"{file}:3" in text and f"{file}:1" in text and "0.1" in text


def test_explain_shows_value_replaced_by_block_in_child_template(tmp_path):
    _write(tmp_path, "base.yaml", "lr: 0.1\n{% block more %}{% endblock %}\n")
    config = _load(
        tmp_path,
        "child.yaml",
        """
        {% extends "base.yaml" %}
        {% block more %}
        lr: 0.5
        {% endblock %}
        """,
    )
    expl = explain(config, "lr", ["child.yaml", "base.yaml"])
    assert expl.value == 0.5
    assert (Path(expl.origin.file).name, expl.origin.line) == ("child.yaml", 3)
    assert [(Path(o.file).name, o.line) for o, _ in expl.overrode] == [("base.yaml", 1)]
    assert expl.templates == ["child.yaml", "base.yaml"]
    assert "child.yaml -> base.yaml" in render_explanation(expl)


def test_explain_shows_command_line_override_in_overrode(tmp_path):
    config = _load(tmp_path, "c.yaml", "a:\n  b: 1\n")
    apply_overrides(config.graph, ["a.b=3"])
    expl = explain(config, "a.b")
    assert expl.value == 3
    assert expl.origin.kind == "override"
    assert expl.origin.text == "a.b=3"
    [(old_origin, old_value)] = expl.overrode
    assert (old_origin.file, old_origin.line, old_value) == (str(tmp_path / "c.yaml"), 2, 1)
    text = render_explanation(expl)
    assert "set at: a.b=3" in text
    assert f"{tmp_path / 'c.yaml'}:2" in text


def test_explain_reaches_into_node_arguments():
    config = load_config_string(
        "model: !singleton:fractions:Fraction\n  numerator: 1\n  denominator: 3\n"
    )
    expl = explain(config, "model.denominator")
    assert (expl.value, expl.origin.line, expl.overrode) == (3, 3, [])
    whole = explain(config, "model")
    assert whole.origin.line == 1
    assert render_explanation(whole).startswith(
        "model = !singleton:fractions:Fraction {numerator: 1, denominator: 3}"
    )


def test_explain_templates_default_to_empty_list():
    config = load_config_string("a: 1\n")
    expl = explain(config, "a")
    assert expl == Explanation("a", 1, expl.origin, [], [])


def test_explain_unknown_path_raises_override_error():
    config = load_config_string("a: {b: 1}\n")
    with pytest.raises(errors.OverrideError, match="no 'c'"):
        explain(config, "a.c")


def test_template_chain_lists_loaded_templates_once(tmp_path):
    _write(tmp_path, "base.yaml", "a: 1\n{% block b %}{% endblock %}\n")
    _write(tmp_path, "child.yaml", '{% extends "base.yaml" %}\n')
    env = ConfigEnvironment([tmp_path])
    load_config(env, "child.yaml")
    load_config(env, "child.yaml")
    assert template_chain(env) == ["child.yaml", "base.yaml"]


# ---- format_value ------------------------------------------------------------------------------


def test_format_value_writes_scalars_as_yaml():
    assert format_value(3) == "3"
    assert format_value(0.5) == "0.5"
    assert format_value(None) == "null"
    assert format_value(True) == "true"
    assert format_value("text") == "text"
    assert format_value("1") == "'1'"
    assert format_value("two\nlines") == '"two\\nlines"'


def test_format_value_writes_nodes_as_flow_yaml():
    config = load_config_string(
        "a: !singleton:torch.nn:Linear@lin [4, 8]\n"
        "b: !partial:builtins:sorted {key: !var k}\n"
        "c: !tuple []\n"
        "d: {x: [1, 2]}\n"
    )
    assert format_value(config.graph["a"]) == "!singleton:torch.nn:Linear@lin [4, 8]"
    assert format_value(config.graph["b"]) == "!partial:builtins:sorted {key: !var k}"
    assert format_value(config.graph["c"]) == "!tuple []"
    assert format_value(config.graph["d"]) == "{x: [1, 2]}"


def test_format_value_truncates_past_width_with_ellipsis():
    text = format_value(list(range(100)), width=20)
    assert len(text) == 20
    assert text.endswith("…")
    assert format_value([1, 2], width=20) == "[1, 2]"


def test_format_origin_prints_file_line_or_override_text():
    assert format_origin(Origin("/x/c.yaml", 4)) == "/x/c.yaml:4"
    assert format_origin(Origin("<command line>", kind="override", text="a=1")) == "a=1"
    assert format_origin(None) == "?"


# ---- diff --------------------------------------------------------------------------------------

A_TEXT = """
.shared: &shared !singleton:fractions:Fraction [1, 2]
lr: 0.1
model: !singleton:fractions:Fraction
  numerator: 1
  denominator: 3
layers: [1, 2, 3]
removed_key: gone
same: *shared
"""

B_TEXT = """
.shared: &shared !singleton:fractions:Fraction [1, 2]
lr: 0.2
model: !singleton:fractions:Fraction
  numerator: 1
  denominator: 4
layers: [1, 2]
same: *shared
added_key: {x: 1}
"""


def test_diff_reports_changed_added_and_removed_with_origins(tmp_path):
    a = _load(tmp_path, "a.yaml", A_TEXT)
    b = _load(tmp_path, "b.yaml", B_TEXT)
    entries = diff_configs(a, b)
    fa, fb = str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")
    summary = [
        (
            e.path,
            e.status,
            e.a_value,
            e.a_origin and (e.a_origin.file, e.a_origin.line),
            e.b_value,
            e.b_origin and (e.b_origin.file, e.b_origin.line),
        )
        for e in entries
    ]
    assert summary == [
        ("lr", "changed", 0.1, (fa, 2), 0.2, (fb, 2)),
        ("model.denominator", "changed", 3, (fa, 5), 4, (fb, 5)),
        ("layers.2", "removed", 3, (fa, 6), None, None),
        ("removed_key", "removed", "gone", (fa, 7), None, None),
        ("added_key", "added", None, None, {"x": 1}, (fb, 8)),
    ]
    assert all(isinstance(e, DiffEntry) for e in entries)


def test_diff_of_identical_configs_is_empty(tmp_path):
    a = _load(tmp_path, "a.yaml", A_TEXT)
    b = _load(tmp_path, "b.yaml", A_TEXT)
    assert diff_configs(a, b) == []
    assert diff_configs(a, a) == []


def test_diff_reports_changed_node_spec_at_the_node(tmp_path):
    a = load_config_string("m: !singleton:fractions:Fraction [1, 2]\n")
    b = load_config_string("m: !factory:fractions:Fraction [1, 2]\n")
    c = load_config_string("m: !singleton:decimal:Decimal [1, 2]\n")
    assert [(e.path, e.status) for e in diff_configs(a, b)] == [("m", "changed")]
    assert [(e.path, e.status) for e in diff_configs(a, c)] == [("m", "changed")]


def test_diff_compares_leaves_by_their_yaml_text():
    a = load_config_string("x: 1\ny: '1'\nz: [1]\n")
    b = load_config_string("x: 1.0\ny: 1\nz: !tuple [1]\n")
    assert [e.path for e in diff_configs(a, b)] == ["x", "y", "z"]


def test_diff_ignores_dot_keys():
    a = load_config_string(".hidden: 1\nx: 1\n")
    b = load_config_string(".hidden: 2\nx: 1\n")
    assert diff_configs(a, b) == []


def test_diff_sees_command_line_override(tmp_path):
    a = _load(tmp_path, "a.yaml", "t:\n  steps: 10\n")
    b = _load(tmp_path, "b.yaml", "t:\n  steps: 10\n")
    apply_overrides(b.graph, ["t.steps=20"])
    [entry] = diff_configs(a, b)
    assert (entry.path, entry.b_value, entry.b_origin.text) == ("t.steps", 20, "t.steps=20")


def test_diff_lists_paths_only_b_has_after_those_of_a_in_b_order():
    a = load_config_string("p: {x: 1}\nq: {x: 1}\n")
    b = load_config_string("q: {x: 1, new_q: 1}\np: {x: 2, new_p: 1}\nr: 1\n")
    assert [(e.path, e.status) for e in diff_configs(a, b)] == [
        ("p.x", "changed"),
        ("q.new_q", "added"),
        ("p.new_p", "added"),
        ("r", "added"),
    ]


def test_render_diff_returns_table_with_values_and_origins(tmp_path):
    a = _load(tmp_path, "a.yaml", A_TEXT)
    b = _load(tmp_path, "b.yaml", B_TEXT)
    apply_overrides(b.graph, ["lr=0.3"])
    table = render_diff(diff_configs(a, b), "a.yaml", "b.yaml")
    assert isinstance(table, Table)
    assert len(table.columns) == 5
    assert table.row_count == 5
    text = _render(table)
    assert "model.denominator" in text
    assert f"{tmp_path / 'a.yaml'}:5" in text
    assert "lr=0.3" in text
    assert "{x: 1}" in text
