"""Building objects from the graph: sharing, factories, partials, vars, meta, imports and build errors."""

from __future__ import annotations

import sys

import pytest

from forgather.config import errors
from forgather.config.environment import ConfigEnvironment
from forgather.config.graph import load_config, load_config_string
from forgather.config.materialize import Builder, BuiltPartial, materialize
from forgather.config.nodes import FactoryNode, SingletonNode, VarNode
from forgather.config.specs import file_module_name, resolve

pytestmark = pytest.mark.unit


def load(text: str, **variables):
    return load_config_string(text, **variables)


def write(directory, name: str, text: str) -> str:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def load_file(tmp_path, text: str, name: str = "c.yaml"):
    path = write(tmp_path, name, text)
    return load_config(ConfigEnvironment([tmp_path]), name), path


@pytest.fixture
def recorder(tmp_path):
    """A file module whose `make` records each call (to count constructions)."""
    path = write(
        tmp_path,
        "recorder_mod/recorder.py",
        "CALLS = []\n"
        "def make(*args, **kwargs):\n"
        "    CALLS.append((args, kwargs))\n"
        "    return object()\n",
    )
    return path


# ---- singletons and factories -----------------------------------------------------------------


def test_singleton_is_shared_within_one_build():
    config = load("s: &s !singleton:list []\nmain: !tuple [*s, *s]")
    first, second = config.build("main")
    assert first is second


def test_singleton_is_not_cached_across_builds():
    config = load("main: !singleton:list []")
    assert config.build("main") is not config.build("main")


def test_call_tag_is_shared_within_one_build():
    config = load("s: &s !call:list []\nmain: !list [*s, *s]")
    first, second = config.build("main")
    assert first is second


def test_singleton_is_shared_between_targets_of_one_builder():
    config = load("a: &s !singleton:list []\nb: !tuple [*s]")
    builder = config.builder()
    assert builder.build(config.target("a")) is builder.build(config.target("b"))[0]


def test_singleton_is_called_once_per_build(recorder):
    from forgather.config.specs import load_file_module

    config = load(f"s: &s !singleton:{recorder}:make []\nmain: !list [*s, *s, *s]")
    calls = load_file_module(recorder).CALLS
    calls.clear()
    config.build("main")
    assert len(calls) == 1
    config.build("main")
    assert len(calls) == 2


def test_factory_is_fresh_at_each_use():
    config = load("f: &f !factory:list []\nmain: !tuple [*f, *f]")
    first, second = config.build("main")
    assert first == second and first is not second


def test_factory_is_called_at_each_use(recorder):
    from forgather.config.specs import load_file_module

    config = load(f"f: &f !factory:{recorder}:make []\nmain: !list [*f, *f, *f]")
    calls = load_file_module(recorder).CALLS
    calls.clear()
    config.build("main")
    assert len(calls) == 3


def test_singleton_inside_a_factory_is_still_shared():
    config = load("s: &s !singleton:list []\nf: &f !factory:named_tuple [*s]\nmain: !list [*f, *f]")
    first, second = config.build("main")
    assert first is not second and first[0] is second[0]


def test_plain_containers_are_built_recursively():
    config = load("main:\n  a: [1, !call:len [[1, 2]]]\n  b: !tuple [x]")
    assert config.build("main") == {"a": [1, 2], "b": ("x",)}


def test_named_container_builds_a_dict():
    assert load("main: !dict:@n {a: 1}").build("main") == {"a": 1}


# ---- partials ---------------------------------------------------------------------------------


def test_partial_builds_a_callable():
    partial = load("main: !partial:max [1]").build("main")
    assert isinstance(partial, BuiltPartial) and callable(partial)


def test_a_partial_reports_the_parameters_left_to_give():
    """As functools.partial does: code that inspects before calling (datasets' map, the trainer's
    scheduler factory) sees the target's parameters, not *args/**kwargs."""
    import inspect

    config = load(
        "chat: !partial:forgather.ml.data.chat:chat_tokenize_fn { max_length: 64 }\n"
        "step: !partial:torch.optim.lr_scheduler:StepLR { step_size: 3 }\n"
        "builtin: !partial:max [1]\n"
    )
    chat = inspect.signature(config.build("chat")).parameters
    assert "feature" not in chat and {"features", "tokenizer", "packed"} <= set(chat)
    step = inspect.signature(config.build("step")).parameters
    assert "optimizer" in step and "num_training_steps" not in step
    assert not any(p.kind is p.VAR_KEYWORD for p in step.values())
    builtin = inspect.signature(config.build("builtin")).parameters  # max has no signature
    assert [p.kind for p in builtin.values()] == [
        inspect.Parameter.VAR_POSITIONAL,
        inspect.Parameter.VAR_KEYWORD,
    ]


def test_partial_appends_positional_args():
    power = load("main: !partial:pow [2]").build("main")
    assert power(10) == 1024


def test_partial_merges_keyword_args():
    make = load("main: !partial:dict {a: 1, b: 2}").build("main")
    assert make(c=3) == {"a": 1, "b": 2, "c": 3}


def test_partial_caller_keyword_args_win():
    make = load("main: !partial:dict {a: 1, b: 2}").build("main")
    assert make(b=5) == {"a": 1, "b": 5}


def test_partial_is_shared_within_one_build():
    config = load("p: &p !partial:max [0]\nmain: !tuple [*p, *p]")
    first, second = config.build("main")
    assert first is second


def test_partial_is_not_cached_across_builds():
    config = load("main: !partial:max [0]")
    assert config.build("main") is not config.build("main")


def test_partial_can_be_called_many_times():
    power = load("main: !partial:pow [3]").build("main")
    assert [power(2), power(3)] == [9, 27]


def test_partial_shares_the_singletons_of_its_build():
    config = load(
        "s: &s !singleton:list []\np: &p !partial:named_tuple [*s]\nmain: !tuple [*s, *p]"
    )
    shared, partial = config.build("main")
    assert partial()[0] is shared


def test_partials_from_different_builds_do_not_share_singletons():
    config = load("s: &s !singleton:list []\nmain: !partial:named_tuple [*s]")
    first, second = config.build("main"), config.build("main")
    assert first()[0] is not second()[0]


def test_partial_rebuilds_factories_at_each_call():
    config = load("f: &f !factory:list []\nmain: !partial:named_tuple [*f]")
    partial = config.build("main")
    assert partial()[0] is not partial()[0]


def test_partial_exposes_the_function():
    assert load("main: !partial:max [1]").build("main").func is max


def test_lambda_behaves_like_partial():
    assert load("main: !lambda:max [0]").build("main")(-5, 7) == 7


def test_partial_is_not_called_when_built():
    config = load("main: !partial:int [not-a-number]")
    partial = config.build("main")
    with pytest.raises(errors.BuildError, match="ValueError"):
        partial()


def test_call_builtin_calls_a_partial():
    assert load("p: &p !partial:pow [2]\nmain: !call:call [*p, 3]").build("main") == 8


# ---- vars -------------------------------------------------------------------------------------


def test_var_takes_the_build_value():
    assert load("main: !var seed").build("main", seed=3) == 3


def test_var_default_applies_without_a_value():
    assert load("main: !var {name: seed, default: 7}").build("main") == 7


def test_var_value_beats_its_default():
    assert load("main: !var {name: seed, default: 7}").build("main", seed=1) == 1


def test_var_default_may_be_a_node():
    assert load("main: !var {name: x, default: !call:len [[1, 2]]}").build("main") == 2


def test_var_value_may_be_none():
    assert load("main: !var seed").build("main", seed=None) is None


def test_unbound_var_is_an_error():
    with pytest.raises(errors.UnboundVarError, match="!var seed"):
        load("main: !var seed").build("main")


def test_unbound_var_error_lists_the_given_values():
    with pytest.raises(errors.UnboundVarError, match="other"):
        load("main: !var seed").build("main", other=1)


def test_unbound_var_names_file_and_line(tmp_path):
    config, path = load_file(tmp_path, "main: !dict\n  a: 1\n  b: !var missing\n")
    with pytest.raises(errors.UnboundVarError) as info:
        config.build("main")
    assert (info.value.origin.file, info.value.origin.line) == (path, 3)


def test_pp_config_var_is_always_available():
    config = load("main: !var pp_config")
    assert config.build("main") == config.pp_config


def test_var_inside_a_partial_is_resolved_from_its_build():
    partial = load("main: !partial:named_tuple [!var x]").build("main", x=5)
    assert partial() == (5,)


# ---- meta -------------------------------------------------------------------------------------


def test_meta_receives_raw_nodes():
    text = "main: !meta:named_tuple [!call:len [[1]], !factory:list [], !var x, 3]"
    built = load(text).build("main")
    assert isinstance(built[0], SingletonNode)
    assert isinstance(built[1], FactoryNode)
    assert isinstance(built[2], VarNode)
    assert built[3] == 3


def test_meta_receives_raw_keyword_nodes():
    built = load("main: !meta:dict\n  n: !call:len [[1]]").build("main")
    assert isinstance(built["n"], SingletonNode) and built["n"].spec == "len"


def test_meta_does_not_need_its_vars_bound():
    assert load("main: !meta:repr [!var never]").build("main") == "VarNode('never')"


def test_meta_node_is_a_singleton():
    config = load("m: &m !meta:list [[1]]\nmain: !tuple [*m, *m]")
    first, second = config.build("main")
    assert first is second


# ---- latent args ------------------------------------------------------------------------------


def test_latent_args_mapping_is_merged_into_kwargs():
    text = "main: !call:dict\n  a: 1\n  latent_args: !dict {b: 2}"
    assert load(text).build("main") == {"a": 1, "b": 2}


def test_latent_args_win_over_written_kwargs():
    text = "main: !call:dict\n  a: 1\n  latent_args: !dict {a: 2}"
    assert load(text).build("main") == {"a": 2}


def test_latent_args_may_come_from_a_var():
    text = "main: !call:dict\n  a: 1\n  latent_args: !var extra"
    assert load(text).build("main", extra={"z": 9}) == {"a": 1, "z": 9}


def test_null_latent_args_add_nothing():
    text = "main: !call:dict\n  a: 1\n  latent_args: ~"
    assert load(text).build("main") == {"a": 1}


def test_latent_args_must_build_a_mapping():
    text = "main: !call:dict\n  latent_args: [1]"
    with pytest.raises(errors.ArgumentError, match="latent_args must be a mapping"):
        load(text).build("main")
    with pytest.raises(errors.BuildError, match="latent_args must build a mapping"):
        load(text).builder().build(load(text).target("main"))


def test_unknown_keyword_is_reported_before_anything_is_built(tmp_path):
    module = tmp_path / "recorder.py"
    module.write_text(
        "built = []\ndef make(**kw):\n    built.append(kw)\n    return kw\ndef strict(a):\n    return a\n"
    )
    text = f"main: !call:named_list [!call:{module}:make {{x: 1}}, !call:{module}:strict {{b: 2}}]"
    with pytest.raises(errors.ArgumentError, match="missing a required argument: 'a'") as raised:
        load(text).build("main")
    assert raised.value.origin.line == 1
    from forgather.config.specs import load_file_module

    assert load_file_module(str(module)).built == []


def test_latent_args_node_is_shared_with_other_references():
    text = "l: &l !dict {x: 1}\nmain: !tuple [*l, !call:dict {latent_args: *l}]"
    latent, built = load(text).build("main")
    assert built == latent and built is not latent


# ---- import specs -----------------------------------------------------------------------------


def test_builtin_spec_resolves():
    assert resolve("len") is len


def test_builtin_attribute_spec_resolves():
    assert resolve("str.upper") is str.upper


@pytest.mark.parametrize(
    ("spec", "args", "expected"),
    [
        ("getitem", "[{a: 5}, a]", 5),
        ("getattr", "[!call:complex [1, 2], imag]", 2.0),
        ("keys", "[{a: 1, b: 2}]", ["a", "b"]),
        ("values", "[{a: 1, b: 2}]", [1, 2]),
        ("items", "[{a: 1}]", [("a", 1)]),
    ],
)
def test_config_builtins_resolve(spec, args, expected):
    built = load(f"main: !call:{spec} {args}").build("main")
    assert built == expected


def test_call_builtin_calls_its_first_argument():
    assert load("main: !call:call [!partial:max [], 1, 9]").build("main") == 9


def test_module_spec_imports_a_symbol():
    assert load("main: !call:os.path:join [a, b]").build("main") == "a/b"


def test_module_spec_follows_attributes():
    assert load("main: !call:collections:OrderedDict.fromkeys [[a]]").build("main") == {"a": None}


def test_unknown_builtin_is_an_import_spec_error():
    with pytest.raises(errors.ImportSpecError, match="not a builtin"):
        load("main: !call:no_such_builtin []").build("main")


def test_missing_module_is_an_import_spec_error():
    with pytest.raises(errors.ImportSpecError, match="No module named"):
        load("main: !call:no_such_module_xyz:Thing []").build("main")


def test_missing_symbol_is_an_import_spec_error():
    with pytest.raises(errors.ImportSpecError, match="'nothing' not found"):
        load("main: !call:os.path:nothing []").build("main")


def test_malformed_spec_is_an_import_spec_error():
    with pytest.raises(errors.ImportSpecError, match="not of the form"):
        load("main: !call:a:b:c []").build("main")


def test_relative_spec_only_works_in_generated_code():
    with pytest.raises(errors.ImportSpecError, match="relative import"):
        load("main: !call:.module:Thing []").build("main")


def test_missing_file_spec_is_an_import_spec_error(tmp_path):
    with pytest.raises(errors.ImportSpecError, match="no such file"):
        load(f"main: !call:{tmp_path}/absent.py:f []").build("main")


def test_non_callable_spec_is_an_import_spec_error():
    with pytest.raises(errors.ImportSpecError, match="not a callable"):
        load("main: !call:math:pi []").build("main")


def test_file_module_that_fails_to_import_is_an_import_spec_error(tmp_path):
    path = write(tmp_path, "broken.py", "raise RuntimeError('boom')\n")
    with pytest.raises(errors.ImportSpecError, match="boom"):
        load(f"main: !call:{path}:f []").build("main")


def test_bad_import_spec_names_file_and_line(tmp_path):
    config, path = load_file(tmp_path, "a: 1\nmain: !dict\n  x: !call:os.path:nothing []\n")
    with pytest.raises(errors.ImportSpecError) as info:
        config.build("main")
    assert (info.value.origin.file, info.value.origin.line) == (path, 3)


def test_arguments_are_built_before_the_callable_is_imported():
    config = load("main: !call:no_such_module_xyz:Thing [!var unbound]")
    with pytest.raises(errors.UnboundVarError):
        config.build("main")


# ---- file imports -----------------------------------------------------------------------------


def test_file_spec_loads_a_symbol_from_a_file(tmp_path):
    path = write(tmp_path, "tools.py", "def double(x):\n    return 2 * x\n")
    assert load(f"main: !call:{path}:double [21]").build("main") == 42


def test_two_files_with_the_same_name_do_not_collide(tmp_path):
    first = write(tmp_path, "a/model.py", "NAME = 'a'\ndef name():\n    return NAME\n")
    second = write(tmp_path, "b/model.py", "NAME = 'b'\ndef name():\n    return NAME\n")
    config = load(f"main: !tuple [!call:{first}:name [], !call:{second}:name []]")
    assert config.build("main") == ("a", "b")


def test_file_module_name_is_unique_per_full_path(tmp_path):
    assert file_module_name(str(tmp_path / "a/model.py")) != file_module_name(
        str(tmp_path / "b/model.py")
    )


def test_file_module_is_registered_in_sys_modules(tmp_path):
    path = write(tmp_path, "registered.py", "def f():\n    return __name__\n")
    name = load(f"main: !call:{path}:f []").build("main")
    assert name == file_module_name(path) and name in sys.modules


def test_file_module_is_loaded_once(tmp_path):
    path = write(
        tmp_path, "once.py", "LOADS = []\nLOADS.append(1)\ndef loads():\n    return len(LOADS)\n"
    )
    config = load(f"main: !call:{path}:loads []")
    assert [config.build("main"), config.build("main")] == [1, 1]


def test_relative_import_inside_a_file_module_uses_submodule_searchpath(tmp_path):
    write(tmp_path, "pkg/units.py", "SCALE = 100\n")
    main = write(
        tmp_path,
        "pkg/convert.py",
        "from .units import SCALE\ndef scale(x):\n    return x * SCALE\n",
    )
    text = f"main: !call:{main}:scale\n  arg0: 2\n  submodule_searchpath: {tmp_path / 'pkg'}\n"
    assert load(text).build("main") == 200


def test_submodule_searchpath_may_be_a_list(tmp_path):
    write(tmp_path, "libdir/helpers.py", "VALUE = 'helped'\n")
    main = write(
        tmp_path, "code/entry.py", "from .helpers import VALUE\ndef get():\n    return VALUE\n"
    )
    text = f"main: !call:{main}:get\n  submodule_searchpath: [{tmp_path / 'libdir'}]\n"
    assert load(text).build("main") == "helped"


@pytest.mark.parametrize("searchpath", ["5", "[[x]]", "{x: 1}", "[1]"])
def test_submodule_searchpath_that_is_not_a_path_is_an_import_spec_error(searchpath):
    text = f"a: 1\nmain: !call:len\n  arg0: abc\n  submodule_searchpath: {searchpath}\n"
    with pytest.raises(errors.ImportSpecError, match="submodule_searchpath must be") as info:
        load(text).build("main")
    assert info.value.origin.line == 2


def test_submodule_searchpath_is_not_passed_to_the_callable(tmp_path):
    path = write(tmp_path, "kw.py", "def f(**kwargs):\n    return kwargs\n")
    text = f"main: !call:{path}:f\n  a: 1\n  submodule_searchpath: {tmp_path}\n"
    assert load(text).build("main") == {"a": 1}


# ---- argument checking and build errors -------------------------------------------------------


def test_unknown_kwarg_is_an_argument_error():
    with pytest.raises(errors.ArgumentError, match="unexpected keyword argument 'bogus'"):
        load("main: !call:math:isclose {a: 1, b: 1, bogus: 3}").build("main")


def test_missing_required_kwarg_is_an_argument_error():
    with pytest.raises(errors.ArgumentError, match="missing a required argument: 'b'"):
        load("main: !call:math:isclose {a: 1}").build("main")


def test_argument_error_lists_the_parameters():
    with pytest.raises(errors.ArgumentError, match="it takes: a, b, rel_tol, abs_tol"):
        load("main: !call:math:isclose {a: 1}").build("main")


def test_unknown_kwarg_names_file_and_line(tmp_path):
    path = write(tmp_path, "fn.py", "def f(a, b=2):\n    return a + b\n")
    config, cfg = load_file(tmp_path, f"x: 1\nmain: !call:{path}:f\n  a: 1\n  c: 3\n")
    with pytest.raises(errors.ArgumentError) as info:
        config.build("main")
    # The line of the unknown key itself (`c: 3`), not just the node's tag line.
    assert (info.value.origin.file, info.value.origin.line) == (cfg, 4)


def test_missing_required_kwarg_names_file_and_line(tmp_path):
    path = write(tmp_path, "fn2.py", "def f(a, *, b):\n    return a + b\n")
    config, cfg = load_file(tmp_path, f"x: 1\n\nmain: !call:{path}:f\n  a: 1\n")
    with pytest.raises(errors.ArgumentError, match="'b'") as info:
        config.build("main")
    assert (info.value.origin.file, info.value.origin.line) == (cfg, 3)


def test_argument_checking_can_be_turned_off():
    config = load("main: !call:math:isclose {a: 1}")
    with pytest.raises(errors.BuildError, match="TypeError"):
        Builder(check_args=False).build(config.target("main"))


def test_exception_in_a_constructor_is_a_build_error(tmp_path):
    config, path = load_file(tmp_path, "a: 1\nmain: !call:int [nope]\n")
    with pytest.raises(errors.BuildError, match="ValueError") as info:
        config.build("main")
    assert (info.value.origin.file, info.value.origin.line) == (path, 2)


def test_build_error_keeps_the_original_exception():
    with pytest.raises(errors.BuildError) as info:
        load("main: !call:int [nope]").build("main")
    assert isinstance(info.value.__cause__, ValueError)


def test_materialize_builds_in_a_fresh_build():
    graph = load("main: !tuple [!var x, !singleton:list []]").target("main")
    first, second = materialize(graph, x=1), materialize(graph, {"x": 2})
    assert first[0] == 1 and second[0] == 2 and first[1] is not second[1]
