"""Generated code builds what the config graph builds, and reads like hand-written Python."""

from __future__ import annotations

import ast
import importlib
import sys
import textwrap
from collections import Counter, OrderedDict
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction
from functools import partial

import black
import pytest

from forgather.config.codegen import generate_code
from forgather.config.errors import CodegenError
from forgather.config.graph import load_config_string

pytestmark = pytest.mark.unit


def load(text: str):
    return load_config_string(textwrap.dedent(text))


def run(code: str, **variables):
    """Exec the generated module in a fresh namespace and call its `construct`."""
    namespace: dict = {"__name__": "forgather_generated_test"}
    exec(compile(code, "<generated>", "exec"), namespace)
    return namespace["construct"](**variables)


def code_for(text: str, target: str = "main", **kwargs) -> tuple[str, object]:
    config = load(text)
    return generate_code(config.target(target), **kwargs), config


STDLIB = """
    main:
      fraction: !singleton:fractions:Fraction [1, 3]
      delta: !singleton:datetime:timedelta {days: 1, hours: 2}
      counts: !singleton:collections:Counter [[a, b, a]]
      decimal: !singleton:decimal:Decimal ["1.10"]
      ordered: !singleton:collections:OrderedDict [[[x, 1], [y, 2]]]
      plain: {list: [1, 2.5, -3, null, true], nested: {1: one, 2.0: two}, text: "a\\nb"}
      numbers: !tuple [.inf, -.inf, -0.0, 1.0e-7]
      length: !call:len [[1, 2, 3]]
      upper: !call:str.upper [abc]
"""


# ---- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        STDLIB,
        """
        main: !singleton:collections:OrderedDict@od
          arg0: [[a, !singleton:decimal:Decimal ["2.5"]]]
        """,
        """
        main:
          - !dict {a: 1, b: !list [1, 2], c: !tuple [x]}
          - !dlist {first: 1, dropped: null, last: !singleton:fractions:Fraction [3, 4]}
          - !call:dict {a: 1, latent_args: {a: 2, b: 3}}
        """,
        """
        main:
          kwargs: !singleton:datetime:timedelta
            args: [1]
            kwargs: {seconds: 5}
          positional: !singleton:datetime:timedelta {arg0: 2, minutes: 3}
        """,
    ],
)
def test_generated_code_builds_objects_equal_to_builder(text):
    code, config = code_for(text)
    assert run(code) == config.build("main")


def test_stdlib_round_trip_types_are_preserved():
    code, config = code_for(STDLIB)
    built = run(code)
    assert built == config.build("main")
    assert isinstance(built["fraction"], Fraction)
    assert isinstance(built["delta"], timedelta)
    assert isinstance(built["counts"], Counter)
    assert isinstance(built["decimal"], Decimal) and str(built["decimal"]) == "1.10"
    assert isinstance(built["ordered"], OrderedDict)
    assert built["numbers"][0] == float("inf") and built["numbers"][1] == float("-inf")
    assert 'float("inf")' in code and 'float("-inf")' in code


def test_every_name_policy_builds_equal_objects():
    for policy in ("named", "required", "all"):
        code, config = code_for(STDLIB, name_policy=policy)
        assert run(code) == config.build("main"), policy


# ---- sharing ------------------------------------------------------------------------------------


SHARED = """
    .define:
      shared: &shared !singleton:collections:Counter [[a]]
    main:
      first: *shared
      second: *shared
      nested: [*shared]
"""


def test_shared_singleton_is_one_variable_in_generated_code():
    code, config = code_for(SHARED)
    assert code.count("Counter(") == 1
    built = run(code)
    assert built["first"] is built["second"] is built["nested"][0]
    assert built == config.build("main")


def test_singleton_used_in_an_aliased_plain_list_is_still_shared():
    code, _ = code_for(
        """
        .define:
          items: &items [!singleton:collections:Counter [[a]]]
        main: {one: *items, two: *items}
        """
    )
    built = run(code)
    assert built["one"] is not built["two"]  # plain lists are fresh at each use, as in Builder
    assert built["one"][0] is built["two"][0]


def test_named_singleton_uses_its_name_under_named_policy_only():
    text = "main: {x: !singleton:collections:OrderedDict@od [[[a, 1]]]}\n"
    named, _ = code_for(text)
    assert "od = OrderedDict(" in named and '"x": od' in named
    required, _ = code_for(text, name_policy="required")
    assert "od =" not in required and '"x": OrderedDict(' in required


def test_all_policy_gives_every_call_a_generated_variable():
    code, config = code_for(
        "main: [!call:len [[1]], !call:len [[1, 2]], !call:abs [-3]]\n", name_policy="all"
    )
    assert "alpha_ = len(" in code and "beta_ = len(" in code and "gamma_ = abs(" in code
    assert run(code) == config.build("main")


def test_definitions_come_before_their_uses():
    code, config = code_for(
        """
        .define:
          inner: &inner !singleton:fractions:Fraction [1, 2]
          outer: &outer !call:str [*inner]
        main: [*outer, *outer, *inner]
        """
    )
    assert code.index("alpha_ = Fraction(") < code.index("beta_ = str(alpha_)")
    assert run(code) == config.build("main")


def test_factory_is_fresh_at_each_use():
    code, config = code_for(
        """
        .define:
          fresh: &fresh !factory:collections:Counter [[a, b]]
        main: {one: *fresh, two: *fresh}
        """
    )
    assert "from functools import partial" in code
    assert "alpha_ = partial(Counter, " in code and '"one": alpha_()' in code
    built = run(code)
    assert built["one"] == built["two"] == config.build("main")["one"]
    assert built["one"] is not built["two"]


def test_singleton_inside_a_shared_factory_stays_shared():
    code, _ = code_for(
        """
        .define:
          fresh: &fresh !factory:types:SimpleNamespace {inner: !singleton:collections:Counter []}
        main: [*fresh, *fresh]
        """
    )
    one, two = run(code)
    assert one is not two and one.inner is two.inner


def test_partial_appends_positional_args_and_merges_kwargs():
    code, config = code_for(
        """
        main:
          add_one: !partial:operator:add [1]
          delta: !partial:datetime:timedelta {days: 1}
        """
    )
    assert "partial(add, 1)" in code
    built, expected = run(code), config.build("main")
    assert built["add_one"](41) == expected["add_one"](41) == 42
    assert built["delta"](hours=1) == expected["delta"](hours=1) == timedelta(days=1, hours=1)
    assert built["delta"](days=2) == timedelta(days=2)


def test_latent_args_override_keyword_args_like_builder():
    code, config = code_for(
        """
        main: !call:dict
          a: 1
          latent_args: !var {name: extra, default: {}}
        """
    )
    assert run(code, extra={"a": 2, "b": 3}) == config.build("main", extra={"a": 2, "b": 3})
    assert run(code) == config.build("main") == {"a": 1}
    assert "latent_args" not in code


# ---- variables ----------------------------------------------------------------------------------


def test_vars_become_parameters_required_first_then_defaults_sorted():
    code, config = code_for(
        """
        main:
          b: !var beta
          a: !var alpha
          z: !var {name: zed, default: 3}
          y: !var {name: why, default: text}
          g: !var {name: graph, default: !singleton:fractions:Fraction [1, 2]}
          l: !var {name: items, default: [1, 2]}
        """
    )
    assert 'def construct(alpha, beta, graph=None, items=None, why="text", zed=3):' in code
    assert run(code, alpha=1, beta=2) == config.build("main", alpha=1, beta=2)
    given = {"alpha": 1, "beta": 2, "graph": 5, "items": [9], "why": "w", "zed": 0}
    assert run(code, **given) == config.build("main", **given)
    with pytest.raises(TypeError):
        run(code, alpha=1)


def test_mutable_var_default_is_fresh_per_call():
    code, _ = code_for("main: !var {name: items, default: [1]}\n")
    namespace: dict = {}
    exec(code, namespace)
    first = namespace["construct"]()
    first.append(2)
    assert namespace["construct"]() == [1]


def test_named_node_only_in_a_var_default_is_built_only_when_the_var_is_missing():
    code, _ = code_for(
        """
        main: !var {name: model, default: !singleton:collections:Counter@model_default [[a]]}
        """
    )
    assert "if model is None:\n        model_default = Counter(" in code
    assert run(code, model="given") == "given"
    assert run(code) == Counter("a")


def test_var_used_only_in_another_vars_default_is_filled_inside_that_block():
    code, config = code_for(
        "main: !var {name: v, default: !var {name: w, default: !singleton:collections:Counter [[q]]}}\n"
    )
    assert "if v is None:\n        if w is None:" in code
    for given in ({}, {"v": 1}, {"w": 2}):
        assert run(code, **given) == config.build("main", **given)


def test_singleton_shared_by_body_and_var_default_is_built_once():
    code, config = code_for(
        """
        .define:
          shared: &shared !singleton:collections:Counter [[a]]
        main: {direct: *shared, via: !var {name: v, default: *shared}}
        """
    )
    built = run(code)
    assert built["direct"] is built["via"]
    assert built == config.build("main")
    assert run(code, v=0)["via"] == 0


def test_relaxed_kwargs_accepts_unknown_vars():
    code, _ = code_for("main: !var x\n", relaxed_kwargs=True)
    assert "def construct(x, **kwargs):" in code
    assert run(code, x=1, unused=2) == 1


def test_conflicting_defaults_for_one_var_are_refused():
    with pytest.raises(CodegenError, match="different defaults"):
        code_for("main: [!var {name: x, default: 1}, !var {name: x, default: 2}]\n")


# ---- readable special forms ------------------------------------------------------------------------


def test_getattr_getitem_call_and_views_are_written_as_python_syntax():
    code, config = code_for(
        """
        .define:
          od: &od !singleton:collections:OrderedDict@od [[[a, 1], [b, 2]]]
        main:
          attr: !call:getattr [!singleton:fractions:Fraction [1, 3], numerator]
          item: !call:getitem [*od, a]
          called: !call:call [!partial:operator:mul [6], 7]
          keys: !call:keys [*od]
          values: !call:values [*od]
          items: !call:items [*od]
          dict: !dict {x: 1}
          list: !list [1, 2]
          tuple: !tuple [1]
          dlist: !dlist {a: 1, b: null, c: 3}
        """
    )
    assert "Fraction(1, 3).numerator" in code
    assert 'od["a"]' in code
    assert "partial(mul, 6)(7)" in code
    assert "list(od.keys())" in code and "list(od.values())" in code and "list(od.items())" in code
    assert '"dict": {"x": 1}' in code
    assert '"list": [1, 2]' in code and '"tuple": (1,)' in code and '"dlist": [1, 3]' in code
    for name in ("getattr", "getitem", "named_dict", "named_list", "named_tuple", "_call"):
        assert name not in code
    assert run(code) == config.build("main")


def test_config_builtins_as_factories_and_partials_still_work():
    code, config = code_for(
        """
        .define:
          make: &make !factory:named_list [1, 2]
        main:
          lists: [*make, *make]
          tuple: !partial:named_tuple [1]
          getitem: !partial:getitem [[10, 20]]
        """
    )
    built, expected = run(code), config.build("main")
    assert built["lists"] == expected["lists"] and built["lists"][0] is not built["lists"][1]
    assert built["tuple"](2) == expected["tuple"](2) == (1, 2)
    assert built["getitem"](1) == 20


# ---- imports ----------------------------------------------------------------------------------------


def test_keyword_and_odd_kwarg_names_are_passed_through_a_dict():
    code, config = code_for('main: !call:dict {class: 1, ok: 2, "x-y": 3}\n')
    assert 'dict(**{"class": 1}, ok=2, **{"x-y": 3})' in code
    assert run(code) == config.build("main")


def test_pkg_spec_imports_the_symbol_and_follows_attributes():
    code, config = code_for("main: !call:datetime:datetime.fromisoformat ['2020-01-02']\n")
    assert "from datetime import datetime\n" in code
    assert 'datetime.fromisoformat("2020-01-02")' in code
    assert run(code) == config.build("main")


def test_builtins_stay_bare_without_imports():
    code, _ = code_for(
        "main: [!call:len [[1]], !call:str.upper [a], !call:builtins:max [[1, 2]]]\n"
    )
    assert "import" not in code
    assert "len([1])" in code and 'str.upper("a")' in code and "max([1, 2])" in code


def test_import_name_clashes_get_aliases():
    code, config = code_for(
        """
        main:
          a: !singleton:collections:OrderedDict@OrderedDict
          b: !call:typing:OrderedDict []
          c: !call:len [!var str]
          d: !call:str [1]
        """
    )
    assert "from collections import OrderedDict as OrderedDict_1" in code
    assert "from typing import OrderedDict as OrderedDict_2" in code
    assert "OrderedDict = OrderedDict_1()" in code
    assert "import builtins" in code and "builtins.str(1)" in code  # `str` is a parameter
    assert run(code, str="abc") == config.build("main", str="abc")


def write_model(directory, field: str):
    directory.mkdir(parents=True)
    (directory / "model.py").write_text(
        f"from dataclasses import dataclass\n\n\n@dataclass\nclass Model:\n    {field}: int = 0\n"
    )
    return directory / "model.py"


def test_file_specs_with_the_same_file_name_do_not_collide(tmp_path):
    first = write_model(tmp_path / "one", "x")
    second = write_model(tmp_path / "two", "y")
    code, config = code_for(
        f"""
        main:
          a: !singleton:{first}:Model {{x: 1}}
          b: !singleton:{second}:Model [2]
        """
    )
    bindings = {
        statement.targets[0].id: ast.literal_eval(ast.List(statement.value.args, ast.Load()))
        for statement in ast.parse(code).body
        if isinstance(statement, ast.Assign)
    }
    assert bindings == {
        "Model": [str(first), "Model", [str(first.parent)]],
        "Model_1": [str(second), "Model", [str(second.parent)]],
    }
    built = run(code)
    assert type(built["a"]) is not type(built["b"])
    assert built == config.build("main")


def test_file_spec_uses_a_literal_submodule_searchpath(tmp_path):
    package = tmp_path / "lib"
    package.mkdir()
    (package / "helpers.py").write_text("VALUE = 7\n")
    (package / "entry.py").write_text(
        "from .helpers import VALUE\n\n\ndef get():\n    return VALUE\n"
    )
    code, config = code_for(
        f"""
        main: !call:{package}/entry.py:get {{submodule_searchpath: ["{package}"]}}
        """
    )
    assert f'["{package}"]' in code and "submodule_searchpath" not in code
    assert run(code) == config.build("main") == 7


def test_relative_spec_emits_a_relative_import(tmp_path, monkeypatch):
    name = f"codegen_pkg_{tmp_path.name.replace('-', '_')}"
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text("def Sym(*args):\n    return ('sym', *args)\n")
    code, _ = code_for("main: !call:.mod:Sym [1]\n")
    assert "from .mod import Sym\n" in code
    (package / "generated.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        module = importlib.import_module(f"{name}.generated")
        assert module.construct() == ("sym", 1)
    finally:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


def test_imports_are_sorted():
    code, _ = code_for(
        """
        main:
          - !call:fractions:Fraction [1]
          - !call:collections:Counter []
          - !partial:decimal:Decimal []
        """
    )
    lines = [line for line in code.splitlines() if line.startswith(("from ", "import "))]
    assert lines == sorted(lines)
    assert "from functools import partial" in lines


# ---- errors, format, determinism ---------------------------------------------------------------


def test_meta_node_cannot_be_generated_and_the_error_names_spec_and_origin():
    config = load(
        """
        main:
          ok: 1
          meta: !meta:some.module:transform [1]
        """
    )
    with pytest.raises(CodegenError) as error:
        generate_code(config.target("main"))
    assert "some.module:transform" in str(error.value)
    assert error.value.origin is not None and error.value.origin.line == 4
    assert ":4" in str(error.value)


def test_unknown_name_policy_is_refused():
    with pytest.raises(ValueError, match="name_policy"):
        generate_code(1, name_policy="sometimes")


def test_output_is_black_formatted_compiles_and_names_its_source():
    code, _ = code_for(STDLIB, source="configs/stdlib.yaml")
    assert black.format_str(code, mode=black.Mode()) == code
    compile(code, "<generated>", "exec")
    assert code.startswith('"""Generated by forgather from configs/stdlib.yaml."""\n')


def test_function_name_can_be_chosen():
    code = generate_code(load("main: 1\n").target("main"), function_name="build_main")
    namespace: dict = {}
    exec(code, namespace)
    assert namespace["build_main"]() == 1


def test_generation_is_deterministic():
    text = (
        """
    .s: &s !singleton:collections:Counter@counter [[z]]
    """
        + STDLIB
        + """
      shared: [*s, *s, !partial:operator:add [1], !var {name: v, default: [1]}, !var w]
    """
    )
    config = load(text)
    first = generate_code(config.target("main"))
    again = generate_code(load(text).target("main"))
    assert first == again == generate_code(config.target("main"))


def test_scalars_and_plain_containers_round_trip():
    value = {
        "int": -5,
        "float": 2.5,
        "text": "line one\nline two",
        "bytes": b"\x00\xff",
        "none": None,
        "bools": [True, False],
        "tuple": (1, (2, "x")),
        1: "int key",
        (1, 2): "tuple key",
    }
    assert run(generate_code(value)) == value


def test_partial_class_is_functools_partial():
    code, _ = code_for("main: !partial:operator:add [1]\n")
    assert isinstance(run(code), partial)


def test_without_black_the_unformatted_module_still_compiles(monkeypatch):
    monkeypatch.setitem(sys.modules, "black", None)  # makes `import black` raise ImportError
    code, config = code_for(STDLIB)
    compile(code, "<generated>", "exec")
    assert run(code) == config.build("main")
