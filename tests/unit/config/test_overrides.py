"""Override chains in templates, command-line `path=value` overrides and declared dynamic flags."""

from __future__ import annotations

import pytest

from forgather.config import errors
from forgather.config.dynamic_args import declared_args, parse_flags
from forgather.config.environment import ConfigEnvironment
from forgather.config.graph import load_config, load_config_string
from forgather.config.nodes import SingletonNode
from forgather.config.overrides import (
    Override,
    apply_override,
    apply_overrides,
    is_override,
    parse_override,
)
from forgather.project import Project, load_project

pytestmark = pytest.mark.unit


def write(directory, name: str, text: str) -> str:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


# ---- override chains in templates -------------------------------------------------------------


@pytest.fixture
def chain(tmp_path):
    write(
        tmp_path,
        "base.yaml",
        "main: !dict\n    -- block args\n    a: 1\n    b: 1\n    c: 1\n    -- endblock args\n",
    )
    write(tmp_path, "mid.yaml", "-- extends 'base.yaml'\n[args]\n== super()\n    b: 2\n    d: 2\n")
    write(tmp_path, "leaf.yaml", "-- extends 'mid.yaml'\n[args]\n== super()\n    c: 3\n    d: 3\n")
    return ConfigEnvironment([tmp_path])


def test_each_level_of_an_override_chain_takes_effect(chain):
    assert load_config(chain, "leaf.yaml").build("main") == {"a": 1, "b": 2, "c": 3, "d": 3}


def test_middle_of_an_override_chain_builds_on_its_own(chain):
    assert load_config(chain, "mid.yaml").build("main") == {"a": 1, "b": 2, "c": 1, "d": 2}


def test_child_block_without_super_replaces_everything(tmp_path):
    write(tmp_path, "base.yaml", "main: !dict\n    -- block args\n    a: 1\n    -- endblock args\n")
    write(tmp_path, "leaf.yaml", "-- extends 'base.yaml'\n[args]\n    z: 9\n")
    assert load_config(ConfigEnvironment([tmp_path]), "leaf.yaml").build("main") == {"z": 9}


def test_child_can_delete_an_inherited_dlist_item(tmp_path):
    write(
        tmp_path,
        "base.yaml",
        "cbs: !dlist\n    -- block cbs\n    a: 1\n    b: 2\n    -- endblock\n",
    )
    write(tmp_path, "leaf.yaml", "-- extends 'base.yaml'\n[cbs]\n== super()\n    a: ~\n    c: 3\n")
    assert load_config(ConfigEnvironment([tmp_path]), "leaf.yaml").build("cbs") == [2, 3]


def test_child_can_extend_an_empty_dlist(tmp_path):
    write(tmp_path, "base.yaml", "cbs: !dlist\n    null: ~\n    -- block cbs\n    -- endblock\n")
    write(tmp_path, "leaf.yaml", "-- extends 'base.yaml'\n[cbs]\n    x: 1\n")
    assert load_config(ConfigEnvironment([tmp_path]), "leaf.yaml").build("cbs") == [1]


# ---- parsing overrides ------------------------------------------------------------------------


def test_parse_override_sets_a_value():
    assert parse_override("a.b=1") == Override("a.b", "1", "set")


def test_parse_override_with_plus_adds():
    assert parse_override("+a.c=2") == Override("a.c", "2", "add")


def test_parse_override_with_tilde_deletes():
    assert parse_override("~a.d") == Override("a.d", "", "delete")


def test_parse_override_keeps_equals_signs_in_the_value():
    assert parse_override("a=x=y").value_text == "x=y"


def test_delete_with_a_value_is_an_error():
    with pytest.raises(errors.OverrideError, match="takes no value"):
        parse_override("~a=1")


def test_token_without_equals_is_not_an_override():
    with pytest.raises(errors.OverrideError, match="key.path=value"):
        parse_override("abc")


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("a.b=1", True),
        ("+a.b=1", True),
        ("~a.b", True),
        ("--max-steps", False),
        ("--max-steps=5", False),
        ("-n", False),
        ("plain", False),
        ("a b=1", False),
    ],
)
def test_is_override_tells_overrides_from_flags(token, expected):
    assert is_override(token) is expected


def test_override_text_round_trips():
    assert [parse_override(t).text for t in ("a=1", "+b=2", "~c")] == ["a=1", "+b=2", "~c"]


# ---- applying overrides -----------------------------------------------------------------------


def config_of(text: str):
    return load_config_string(text)


def test_override_sets_a_nested_value():
    config = config_of("main:\n  a:\n    b: 1\n")
    apply_overrides(config.graph, ["main.a.b=2"])
    assert config.build("main") == {"a": {"b": 2}}


def test_override_value_is_yaml():
    config = config_of("main: {a: 1}")
    apply_overrides(config.graph, ["main.a=[1, 2.5, x]"])
    assert config.build("main") == {"a": [1, 2.5, "x"]}


@pytest.mark.parametrize(
    ("typed", "value"),
    [
        ("no", "no"), ("yes", "yes"), ("on", "on"), ("off", "off"), ("NO", "NO"),
        ("true", True), ("False", False), ("null", None), ("~", None),
        ("1e-3", 0.001), ("-2.5E+2", -250.0), (".inf", float("inf")), ("010", 10),
        ("0x1f", 31), ("0o17", 15), ("7", 7), ("[no, 1e-3, off]", ["no", 0.001, "off"]),
        ("'1e-3'", "1e-3"), ("2024-01-02", "2024-01-02"),
    ],
)  # fmt: skip
def test_override_values_read_as_typed_on_a_command_line(typed, value):
    """YAML 1.2 core, as Hugging Face-style command lines are typed: `eval_strategy=no` is the
    string "no" (YAML 1.1 would read False), `learning_rate=1e-3` a float (1.1: a string)."""
    config = config_of("main: {a: 1}")
    apply_overrides(config.graph, [f"main.a={typed}"])
    assert config.build("main") == {"a": value}


def test_config_files_keep_their_yaml_reading():
    config = config_of("main: {a: no, b: 1e-3}")  # a config file is YAML as PyYAML reads it
    assert config.build("main") == {"a": False, "b": "1e-3"}


def test_override_value_may_be_a_node():
    config = config_of("main: {a: 1}")
    apply_overrides(config.graph, ["main.a=!call:len [[1, 2, 3]]"])
    assert config.build("main") == {"a": 3}


def test_empty_override_value_is_an_empty_string():
    config = config_of("main: {a: 1}")
    apply_overrides(config.graph, ["main.a="])
    assert config.build("main") == {"a": ""}


def test_override_sets_a_callable_kwarg():
    config = config_of("main: !call:dict\n  a: 1\n")
    apply_overrides(config.graph, ["main.a=5"])
    assert config.build("main") == {"a": 5}


def test_override_sets_a_positional_arg():
    config = config_of("main: !call:pow [2, 3]")
    apply_overrides(config.graph, ["main.1=10"])
    assert config.build("main") == 1024


def test_override_sets_a_positional_arg_by_arg_key():
    config = config_of("main: !call:pow [2, 3]")
    apply_overrides(config.graph, ["main.arg0=3"])
    assert config.build("main") == 27


def test_override_sets_a_list_item():
    config = config_of("main: [1, 2, 3]")
    apply_overrides(config.graph, ["main.-1=9"])
    assert config.build("main") == [1, 2, 9]


def test_override_sets_a_dlist_item():
    config = config_of("main: !dlist\n  a: 1\n  b: 2\n")
    apply_overrides(config.graph, ["main.a=5"])
    assert config.build("main") == [5, 2]


def test_override_sets_a_var_default():
    config = config_of("main: !var {name: x, default: 1}")
    apply_overrides(config.graph, ["main.default=2"])
    assert config.build("main") == 2


def test_override_through_an_alias_changes_every_reference():
    config = config_of("a: &s !dict {v: 1}\nmain: !tuple [*s, *s]")
    apply_overrides(config.graph, ["a.v=2"])
    assert config.build("main") == ({"v": 2}, {"v": 2})


def test_later_override_wins():
    config = config_of("main: {a: 1}")
    apply_overrides(config.graph, ["main.a=2", "main.a=3"])
    assert config.build("main") == {"a": 3}


def test_add_override_adds_a_key():
    config = config_of("main: !dict {a: 1}")
    apply_overrides(config.graph, ["+main.b=2"])
    assert config.build("main") == {"a": 1, "b": 2}


def test_add_override_adds_a_top_level_target():
    config = config_of("main: 1")
    apply_overrides(config.graph, ["+extra=!call:len [ab]"])
    assert config.build("extra") == 2


def test_add_override_refuses_an_existing_key():
    config = config_of("main: {a: 1}")
    with pytest.raises(errors.OverrideError, match="already exists"):
        apply_overrides(config.graph, ["+main.a=2"])


def test_add_override_into_a_non_mapping_is_an_error():
    config = config_of("main: [1]")
    with pytest.raises(errors.OverrideError, match="not a mapping"):
        apply_overrides(config.graph, ["+main.x=2"])


def test_delete_override_removes_a_key():
    config = config_of("main: !dict {a: 1, b: 2}")
    apply_overrides(config.graph, ["~main.a"])
    assert config.build("main") == {"b": 2}


def test_delete_override_removes_a_dlist_item():
    config = config_of("main: !dlist\n  a: 1\n  b: 2\n")
    apply_overrides(config.graph, ["~main.a"])
    assert config.build("main") == [2]


def test_delete_override_refuses_list_items():
    config = config_of("main: [1, 2]")
    with pytest.raises(errors.OverrideError, match="only mapping keys"):
        apply_overrides(config.graph, ["~main.0"])


def test_override_path_matching_nothing_is_an_error():
    config = config_of("main: {a: 1}")
    with pytest.raises(errors.OverrideError, match="main has no 'zz'; keys there: a"):
        apply_overrides(config.graph, ["main.zz=1"])


def test_override_path_matching_nothing_names_file_and_line(tmp_path):
    path = write(tmp_path, "c.yaml", "x: 1\n\nmain: !dict\n  a: 1\n")
    config = load_config(ConfigEnvironment([tmp_path]), "c.yaml")
    with pytest.raises(errors.OverrideError) as info:
        apply_overrides(config.graph, ["main.zz=1"])
    assert (info.value.origin.file, info.value.origin.line) == (path, 3)
    assert info.value.key == "main.zz"


def test_override_into_a_scalar_names_the_scalars_line(tmp_path):
    path = write(tmp_path, "c.yaml", "main:\n  a: 1\n  b: 2\n")
    config = load_config(ConfigEnvironment([tmp_path]), "c.yaml")
    with pytest.raises(errors.OverrideError, match="main.b has no 'c'") as info:
        apply_overrides(config.graph, ["main.b.c=1"])
    assert (info.value.origin.file, info.value.origin.line) == (path, 3)


def test_override_with_a_malformed_path_is_an_error():
    with pytest.raises(errors.OverrideError, match="not a dotted key path"):
        apply_overrides(config_of("a: 1").graph, ["a..b=1"])


def test_override_with_bad_yaml_names_the_command_line():
    config = config_of("main: {a: 1}")
    with pytest.raises(errors.OverrideError) as info:
        apply_overrides(config.graph, ["main.a=[1"])
    assert info.value.origin.kind == "override" and info.value.origin.text == "main.a=[1"


def test_override_with_an_unknown_tag_is_an_override_error():
    config = config_of("main: {a: 1}")
    with pytest.raises(errors.OverrideError, match="!bogus"):
        apply_overrides(config.graph, ["main.a=!bogus 1"])


def test_apply_override_accepts_an_override_object():
    config = config_of("main: {a: 1}")
    apply_override(config.graph, Override("main.a", "7"))
    assert config.build("main") == {"a": 7}


def test_override_replacing_a_node_keeps_it_a_node():
    config = config_of("main: {a: 1}")
    apply_overrides(config.graph, ["main.a=!dict {x: 1}"])
    assert isinstance(config.graph["main"]["a"], SingletonNode)


# ---- projects: overrides and dynamic flags ----------------------------------------------------


@pytest.fixture
def flag_project(tmp_path):
    write(tmp_path, "meta.yaml", "-- extends 'meta_defaults.yaml'\n")
    path = write(
        tmp_path,
        "templates/configs/run.yaml",
        "-- extends 'config_type.yaml'\n"
        "[dynamic_args]\n"
        "    == super()\n"
        "    max_steps:\n"
        "        names: '--max-steps'\n"
        "        type: int\n"
        "    name:\n"
        "        names: ['--name', '-n']\n"
        "    fast:\n"
        "        names: '--fast'\n"
        "        type: bool\n"
        "[main_body]\n"
        "main: !dict\n"
        "    max_steps: {{ max_steps | default(100) }}\n"
        "    name: {{ name | default('run') | toyaml }}\n"
        "    fast: {{ fast | default(false) | toyaml }}\n"
        "    other: 1\n",
    )
    return tmp_path, path


def test_project_applies_overrides(flag_project):
    directory, _ = flag_project
    project = Project("run.yaml", directory, overrides=["main.other=2"])
    assert project()["other"] == 2


def test_declared_flags_are_read_from_dynamic_args(flag_project):
    directory, _ = flag_project
    declared = declared_args(Project("run.yaml", directory).config)
    assert [(arg.flag, arg.dest, arg.type) for arg in declared] == [
        ("--max-steps", "max_steps", "int"),
        ("--name", "name", "str"),
        ("--fast", "fast", "bool"),
    ]


def test_parse_flags_types_values(flag_project):
    directory, _ = flag_project
    declared = declared_args(Project("run.yaml", directory).config)
    values, texts = parse_flags(declared, ["--max-steps", "5", "-n", "x", "--fast"])
    assert values == {"max_steps": 5, "name": "x", "fast": True}
    assert texts["max_steps"] == "--max-steps 5"


def test_flags_not_given_keep_template_defaults(flag_project):
    directory, _ = flag_project
    project = load_project(directory, "run.yaml", ["--max-steps", "5"])
    assert project() == {"max_steps": 5, "name": "run", "fast": False, "other": 1}


def test_dynamic_flag_rerenders_the_config(flag_project):
    directory, _ = flag_project
    project = load_project(directory, "run.yaml", ["--max-steps", "7"])
    assert "max_steps: 7" in project.pp_config


def test_dynamic_flag_is_recorded_in_provenance(flag_project):
    directory, path = flag_project
    project = load_project(directory, "run.yaml", ["--max-steps", "5"])
    value, provenance = project.config.lookup("main.max_steps")
    assert value == 5
    assert provenance.origin.kind == "dynamic-arg"
    assert "--max-steps 5" in provenance.origin.text
    assert f"{path}:14" in provenance.origin.text
    assert [((o.file, o.line), v) for o, v in provenance.overrode] == [((path, 14), 100)]


def test_values_the_flags_did_not_change_keep_their_template_origin(flag_project):
    directory, path = flag_project
    project = load_project(directory, "run.yaml", ["--max-steps", "5"])
    _, provenance = project.config.lookup("main.name")
    assert (provenance.origin.file, provenance.origin.line) == (path, 15)


def test_flags_and_overrides_combine(flag_project):
    directory, _ = flag_project
    project = load_project(directory, "run.yaml", ["--max-steps", "5", "main.other=3"])
    assert project()["max_steps"] == 5 and project()["other"] == 3
    _, provenance = project.config.lookup("main.other")
    assert provenance.origin.kind == "override" and provenance.origin.text == "main.other=3"


def test_override_after_a_flag_wins(flag_project):
    directory, _ = flag_project
    project = load_project(directory, "run.yaml", ["--max-steps", "5", "main.max_steps=9"])
    value, provenance = project.config.lookup("main.max_steps")
    assert value == 9
    assert provenance.origin.kind == "override"
    assert provenance.overrode[-1][0].kind == "dynamic-arg"


def test_unknown_flag_is_a_config_error(flag_project):
    directory, _ = flag_project
    with pytest.raises(errors.ConfigError, match="--nope.*--max-steps"):
        load_project(directory, "run.yaml", ["--nope"])


def test_bad_flag_value_is_a_config_error(flag_project):
    directory, _ = flag_project
    with pytest.raises(errors.ConfigError, match="invalid int value"):
        load_project(directory, "run.yaml", ["--max-steps", "many"])


def test_load_project_override_matching_nothing_is_an_error(flag_project):
    directory, path = flag_project
    with pytest.raises(errors.OverrideError) as info:
        load_project(directory, "run.yaml", ["main.nothing=1"])
    assert info.value.origin.file == path


def test_config_without_dynamic_args_declares_no_flags():
    assert declared_args(load_config_string("main: 1")) == []


# ---- bad flag declarations --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declaration", "message"),
    [
        ("5", "must build a list"),
        ("[{names: 5}]", "must be a flag or a list"),
        ("[{names: [x]}]", "must be flags like"),
        ("[{type: int}]", "needs 'names'"),
        ("[{names: --a, type: complex}]", "unknown type"),
        ("[{names: --a, action: version}]", "unknown action"),
        ("[{names: --a, action: help}]", "unknown action"),
        ("[{names: --a}, {names: --a}]", "conflicting option"),
        ("[{names: --a, choices: 5}]", "dynamic arg --a"),
    ],
)
def test_bad_flag_declaration_is_a_graph_error(declaration, message):
    config = load_config_string(f"x: 1\ndynamic_args: {declaration}\n")
    with pytest.raises(errors.GraphError, match=message) as info:
        parse_flags(declared_args(config), ["--a", "1"])
    assert info.value.origin.line == 2


def test_flag_parsing_never_exits_the_process():
    config = load_config_string("dynamic_args: [{names: --a, type: int}]")
    with pytest.raises(errors.ConfigError):
        parse_flags(declared_args(config), ["--a"])
