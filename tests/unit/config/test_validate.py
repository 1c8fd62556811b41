"""validate_graph: import specs, argument binding and unbound `!var`s, checked without building."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from forgather.config import errors
from forgather.config.environment import ConfigEnvironment
from forgather.config.graph import Config, load_config, load_config_string
from forgather.config.specs import load_file_module
from forgather.config.validate import validate_graph

pytestmark = pytest.mark.unit


def _load(tmp_path: Path, text: str, name: str = "config.yaml") -> Config:
    (tmp_path / name).write_text(textwrap.dedent(text).lstrip("\n"))
    return load_config(ConfigEnvironment([tmp_path]), name)


def test_validate_accepts_a_correct_config(tmp_path):
    config = _load(
        tmp_path,
        """
        main: !singleton:fractions:Fraction {numerator: 1, denominator: 3}
        sorter: !partial:builtins:sorted {key: !partial:builtins:abs []}
        items: !dlist {a: 1, b: null}
        empty: !tuple []
        """,
    )
    assert validate_graph(config.graph) == []


def test_validate_reports_unknown_keyword_with_file_and_line(tmp_path):
    config = _load(
        tmp_path,
        """
        first: 1
        main: !singleton:fractions:Fraction
          numerator: 1
          bogus: 2
        """,
    )
    [problem] = validate_graph(config.graph)
    assert isinstance(problem, errors.ArgumentError)
    assert "bogus" in problem.message
    assert problem.origin.file == str(tmp_path / "config.yaml")
    assert problem.origin.line == 4  # the line of the unknown key itself
    assert problem.key == "main"
    assert str(problem).startswith(f"{tmp_path / 'config.yaml'}:4: [main] bad arguments")


def test_validate_reports_missing_required_argument(tmp_path):
    config = _load(tmp_path, "main: !singleton:builtins:sorted {reverse: true}\n")
    [problem] = validate_graph(config.graph)
    assert isinstance(problem, errors.ArgumentError)
    assert "iterable" in problem.message
    assert problem.origin.line == 1


def test_validate_reports_too_many_positional_arguments(tmp_path):
    config = _load(tmp_path, "main: !singleton:fractions:Fraction [1, 2, 3, 4]\n")
    [problem] = validate_graph(config.graph)
    assert isinstance(problem, errors.ArgumentError)
    assert "too many positional arguments" in problem.message


def test_validate_reports_bad_module(tmp_path):
    config = _load(tmp_path, "x: 1\nmain: !singleton:no_such_module_xyz:Thing []\n")
    [problem] = validate_graph(config.graph)
    assert isinstance(problem, errors.ImportSpecError)
    assert "no_such_module_xyz" in problem.message
    assert (problem.origin.file, problem.origin.line) == (str(tmp_path / "config.yaml"), 2)


def test_validate_reports_bad_symbol(tmp_path):
    config = _load(tmp_path, "main: !factory:fractions:NoSuchThing []\n")
    [problem] = validate_graph(config.graph)
    assert isinstance(problem, errors.ImportSpecError)
    assert "NoSuchThing" in problem.message
    assert problem.origin.line == 1


def test_validate_reports_a_spec_naming_something_not_callable(tmp_path):
    config = _load(tmp_path, "main: !singleton:math:pi []\n")
    [problem] = validate_graph(config.graph)
    assert isinstance(problem, errors.ImportSpecError)
    assert "not a callable" in problem.message


def test_validate_reports_a_file_module_that_fails_to_import(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    config = _load(tmp_path, f"main: !singleton:{broken}:Thing []\n")
    [problem] = validate_graph(config.graph)
    assert isinstance(problem, errors.ImportSpecError)
    assert "boom" in problem.message


def test_validate_reports_several_problems_at_once_in_graph_order(tmp_path):
    config = _load(
        tmp_path,
        """
        a: !singleton:fractions:Fraction {bogus: 1}
        b:
          c: !singleton:no_such_module_xyz:Thing []
          d: [1, !factory:fractions:Missing []]
        e: !singleton:builtins:sorted []
        f: !var unset
        """,
    )
    problems = validate_graph(config.graph, known_vars=set())
    assert [type(p) for p in problems] == [
        errors.ArgumentError,
        errors.ImportSpecError,
        errors.ImportSpecError,
        errors.ArgumentError,
        errors.UnboundVarError,
    ]
    assert [p.origin.line for p in problems] == [1, 3, 4, 5, 6]
    assert [p.key for p in problems] == ["a", "b.c", "b.d.1", "e", "f"]


def test_validate_checks_nested_arguments_and_dot_keys(tmp_path):
    config = _load(
        tmp_path,
        """
        .define: &bad !singleton:fractions:Fraction {bogus: 1}
        main: !singleton:builtins:list
          - [!singleton:builtins:abs {x: 1, extra: 2}]
        """,
    )
    problems = validate_graph(config.graph)
    assert [p.origin.line for p in problems] == [1, 3]
    assert [p.origin.line for p in validate_graph(config.targets)] == [3]


def test_validate_constructs_nothing(tmp_path):
    module = tmp_path / "tracked.py"
    module.write_text(
        textwrap.dedent(
            """
            CONSTRUCTED = []

            class Thing:
                def __init__(self, size, name="x"):
                    CONSTRUCTED.append(self)

            def make(size):
                CONSTRUCTED.append(size)
                return size
            """
        )
    )
    config = _load(
        tmp_path,
        f"""
        main: !singleton:{module}:Thing
          size: !singleton:{module}:make [3]
          name: !factory:{module}:make [4]
        part: !partial:{module}:Thing {{name: y}}
        meta: !meta:{module}:make [5]
        bad: !singleton:{module}:Thing {{wrong: 1}}
        """,
    )
    problems = validate_graph(config.graph)
    tracked = load_file_module(str(module))
    assert tracked.CONSTRUCTED == []
    assert [p.key for p in problems] == ["bad"]
    config.build("main")  # the same config does construct when built
    assert len(tracked.CONSTRUCTED) == 3


def test_validate_partial_only_checks_that_given_arguments_could_bind(tmp_path):
    config = _load(
        tmp_path,
        """
        ok: !partial:fractions:Fraction {denominator: 3}
        bad: !partial:fractions:Fraction {bogus: 3}
        """,
    )
    problems = validate_graph(config.graph)
    assert [(p.key, type(p)) for p in problems] == [("bad", errors.ArgumentError)]
    assert "bogus" in problems[0].message


def test_validate_latent_args_skip_missing_check_but_not_unknown_keywords(tmp_path):
    config = _load(
        tmp_path,
        """
        ok: !singleton:builtins:sorted {latent_args: !var extra}
        bad: !singleton:builtins:sorted {bogus: 1, latent_args: !var extra}
        literal: !singleton:builtins:sorted {latent_args: {nope: 1}}
        """,
    )
    problems = validate_graph(config.graph)
    assert [p.key for p in problems] == ["bad", "literal"]
    assert "bogus" in problems[0].message
    assert "nope" in problems[1].message


def test_validate_reports_unbound_vars_only_when_known_vars_given(tmp_path):
    config = _load(
        tmp_path,
        """
        a: !var needed
        b: !var {name: optional, default: 1}
        c: !var pp_config
        d: !var given
        """,
    )
    assert validate_graph(config.graph) == []
    problems = validate_graph(config.graph, known_vars={"given"})
    assert len(problems) == 1
    [problem] = problems
    assert isinstance(problem, errors.UnboundVarError)
    assert "needed" in problem.message
    assert (problem.origin.line, problem.key) == (1, "a")


def test_validate_skips_relative_import_specs():
    config = load_config_string("main: !singleton:.generated:Thing {anything: 1}\n")
    assert validate_graph(config.graph) == []


def test_validate_skips_builtins_without_signature():
    config = load_config_string("main: !singleton:builtins:dict {a: 1}\n")
    assert validate_graph(config.graph) == []


def test_validate_reports_non_string_dict_keys_as_build_would():
    config = load_config_string("main: !dict {1: x}\n")
    [problem] = validate_graph(config.graph)
    assert isinstance(problem, errors.ArgumentError)
    with pytest.raises(errors.ArgumentError):
        config.build("main")


def test_validate_reports_a_shared_node_once(tmp_path):
    config = _load(
        tmp_path,
        """
        a: &bad !singleton:fractions:Fraction {bogus: 1}
        b: *bad
        c: [*bad, *bad]
        """,
    )
    problems = validate_graph(config.graph)
    assert [(p.key, p.origin.line) for p in problems] == [("a", 1)]


def test_validate_deduplicates_problems_from_one_template_line(tmp_path):
    config = _load(
        tmp_path,
        """
        main:
        {% for i in range(3) %}
          - !singleton:fractions:Fraction {bogus: {{ i }}}
        {% endfor %}
        """,
    )
    assert len(config.graph["main"]) == 3
    problems = validate_graph(config.graph)
    assert len(problems) == 1
    assert problems[0].origin.line == 3


def test_validate_returns_config_errors_and_never_raises_for_user_problems(tmp_path):
    config = _load(tmp_path, "a: !singleton:x.y.z:W {a: !var q}\nb: !singleton:builtins:len []\n")
    problems = validate_graph(config.graph, known_vars=set())
    assert problems and all(isinstance(p, errors.ConfigError) for p in problems)
    assert all(p.origin is not None for p in problems)


def test_unknown_keyword_suggests_the_close_parameter_name(tmp_path):
    config = _load(
        tmp_path,
        """
        main: !singleton:fractions:Fraction
          numerator: 1
          denominatr: 2
        """,
    )
    [problem] = validate_graph(config.graph)
    assert "unknown argument 'denominatr' (did you mean 'denominator'?)" in problem.message
