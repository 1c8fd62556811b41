"""Provenance: `config.lookup(path)` names the template line that set a value and what it overrode."""

from __future__ import annotations

import pytest

from forgather.config import errors
from forgather.config.environment import ConfigEnvironment
from forgather.config.graph import load_config, load_config_string
from forgather.config.nodes import ConfigMapping
from forgather.config.origin import Origin, Provenance
from forgather.config.overrides import apply_overrides

pytestmark = pytest.mark.unit


def write(directory, name: str, text: str) -> str:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def where(origin: Origin | None) -> tuple[str, int] | None:
    return (origin.file, origin.line) if origin else None


@pytest.fixture
def three_levels(tmp_path):
    """grandparent -> parent -> child, each redeclaring `lr` in the `args` block via `== super()`."""
    files = {
        "grandparent": write(
            tmp_path,
            "grandparent.yaml",
            "## the grandparent\n"
            "main: !dict:@main\n"
            "    -- block args\n"
            "    lr: 1.0\n"
            "    steps: 10\n"
            "    -- endblock args\n",
        ),
        "parent": write(
            tmp_path,
            "parent.yaml",
            "-- extends 'grandparent.yaml'\n"
            "-- block args\n"
            "== super()\n"
            "    lr: 0.5\n"
            "-- endblock args\n",
        ),
        "child": write(
            tmp_path,
            "child.yaml",
            "## the child\n-- extends 'parent.yaml'\n\n[args]\n== super()\n    lr: 0.1\n",
        ),
    }
    return load_config(ConfigEnvironment([tmp_path]), "child.yaml"), files


# ---- three levels of inheritance --------------------------------------------------------------


def test_child_value_wins_through_three_levels(three_levels):
    config, _ = three_levels
    assert config.build("main") == {"lr": 0.1, "steps": 10}


def test_lookup_names_the_childs_file_and_line(three_levels):
    config, files = three_levels
    value, provenance = config.lookup("main.lr")
    assert value == 0.1
    assert where(provenance.origin) == (files["child"], 6)


def test_lookup_names_the_childs_template(three_levels):
    config, _ = three_levels
    _, provenance = config.lookup("main.lr")
    assert provenance.origin.template == "child.yaml"


def test_overrode_lists_parent_and_grandparent_in_order(three_levels):
    config, files = three_levels
    _, provenance = config.lookup("main.lr")
    assert [(where(origin), value) for origin, value in provenance.overrode] == [
        ((files["grandparent"], 4), 1.0),
        ((files["parent"], 4), 0.5),
    ]


def test_value_set_once_has_nothing_overridden(three_levels):
    config, files = three_levels
    value, provenance = config.lookup("main.steps")
    assert value == 10
    assert where(provenance.origin) == (files["grandparent"], 5)
    assert provenance.overrode == []


def test_top_level_key_lookup_names_its_line(three_levels):
    config, files = three_levels
    _, provenance = config.lookup("main")
    assert where(provenance.origin) == (files["grandparent"], 2)


# ---- include and extend -----------------------------------------------------------------------


@pytest.fixture
def include_and_extend(tmp_path):
    base = write(
        tmp_path,
        "optimizer.yaml",
        "optimizer: !partial:dict\n"
        "    -- block optimizer_args\n"
        "    name: sgd\n"
        "    lr: 0.1\n"
        "    -- endblock optimizer_args\n",
    )
    config_file = write(
        tmp_path,
        "cfg.yaml",
        "## a config that includes a sub-template of its own file\n"
        "-- block body\n"
        "-- include 'cfg.sub'\n"
        "\n"
        "main: !call:call [!partial:dict {}]\n"
        "-- endblock body\n"
        "\n"
        "#---- cfg.sub ----\n"
        "-- extends 'optimizer.yaml'\n"
        "-- block optimizer_args\n"
        "== super()\n"
        "    lr: 0.003\n"
        "-- endblock optimizer_args\n",
    )
    return load_config(ConfigEnvironment([tmp_path]), "cfg.yaml"), base, config_file


def test_included_sub_template_value_wins(include_and_extend):
    config, _, _ = include_and_extend
    assert config.build("optimizer")() == {"name": "sgd", "lr": 0.003}


def test_included_sub_template_value_names_its_real_file_line(include_and_extend):
    config, _, config_file = include_and_extend
    _, provenance = config.lookup("optimizer.lr")
    assert where(provenance.origin) == (config_file, 12)
    assert provenance.origin.template == "cfg.sub"


def test_included_sub_template_override_lists_the_base_line(include_and_extend):
    config, base, _ = include_and_extend
    _, provenance = config.lookup("optimizer.lr")
    assert [(where(origin), value) for origin, value in provenance.overrode] == [((base, 4), 0.1)]


def test_value_from_the_extended_base_names_the_base(include_and_extend):
    config, base, _ = include_and_extend
    _, provenance = config.lookup("optimizer.name")
    assert where(provenance.origin) == (base, 3)


def test_value_after_the_include_names_the_including_file(include_and_extend):
    config, _, config_file = include_and_extend
    _, provenance = config.lookup("main")
    assert where(provenance.origin) == (config_file, 5)


# ---- other containers -------------------------------------------------------------------------


def test_lookup_of_a_list_item_names_its_line():
    config = load_config_string("items:\n  - a\n  - b\n")
    value, provenance = config.lookup("items.1")
    assert value == "b" and provenance.origin.line == 3


def test_lookup_of_a_positional_arg_by_index():
    config = load_config_string("main: !call:pow\n  - 2\n  - 3\n")
    value, provenance = config.lookup("main.1")
    assert value == 3 and provenance.origin.line == 3


def test_lookup_of_a_positional_arg_by_arg_key():
    config = load_config_string("main: !call:pow\n  arg1: 3\n  arg0: 2\n")
    value, provenance = config.lookup("main.arg1")
    assert value == 3 and provenance.origin.line == 2


def test_lookup_of_a_dlist_item_names_its_line():
    config = load_config_string("cbs: !dlist\n  a: 1\n  b: 2\n  a: 3\n")
    value, provenance = config.lookup("cbs.a")
    assert value == 3 and provenance.origin.line == 4
    assert [value for _, value in provenance.overrode] == [1]


@pytest.mark.parametrize("path", ["items.--1", "items.\u00b2", "main.arg", "main.\u00b2"])
def test_lookup_of_a_non_ascii_or_malformed_index_matches_nothing(path):
    config = load_config_string("items: [a]\nmain: !call:pow [2, 3]\n")
    with pytest.raises(errors.OverrideError, match="matches nothing"):
        config.lookup(path)


def test_lookup_of_a_negative_list_index():
    assert load_config_string("items: [a, b]").lookup("items.-1")[0] == "b"


def test_lookup_of_a_var_default():
    config = load_config_string("main: !var {name: x, default: 5}")
    assert config.lookup("main.default")[0] == 5


def test_lookup_of_a_missing_path_is_an_override_error():
    with pytest.raises(errors.OverrideError, match="main has no 'zz'"):
        load_config_string("main: {a: 1}").lookup("main.zz")


def test_lookup_of_a_value_repeated_in_one_mapping_lists_the_first():
    config = load_config_string("a: 1\nb: 0\na: 2\n")
    _, provenance = config.lookup("a")
    assert provenance.origin.line == 3
    assert [(origin.line, value) for origin, value in provenance.overrode] == [(1, 1)]


def test_loop_generated_values_name_the_loop_line():
    config = load_config_string("m:\n-- for i in range(3)\n  k{{ i }}: {{ i }}\n-- endfor\n")
    assert {config.lookup(f"m.k{i}")[1].origin.line for i in range(3)} == {3}


def test_lookup_through_an_alias_reports_the_anchor():
    config = load_config_string("a: &x\n  v: 1\nb: *x\n")
    _, provenance = config.lookup("b.v")
    assert provenance.origin.line == 2


# ---- overrides in provenance ------------------------------------------------------------------


def test_command_line_override_is_recorded(three_levels):
    config, files = three_levels
    apply_overrides(config.graph, ["main.lr=0.01"])
    value, provenance = config.lookup("main.lr")
    assert value == 0.01
    assert provenance.origin.kind == "override"
    assert provenance.origin.text == "main.lr=0.01"
    assert [where(origin) for origin, _ in provenance.overrode] == [
        (files["grandparent"], 4),
        (files["parent"], 4),
        (files["child"], 6),
    ]


def test_added_key_is_recorded_as_an_override(three_levels):
    config, _ = three_levels
    apply_overrides(config.graph, ["+main.seed=3"])
    value, provenance = config.lookup("main.seed")
    assert value == 3 and provenance.origin.text == "+main.seed=3"


def test_override_origin_prints_as_command_line():
    origin = Origin("<command line>", 0, None, kind="override", text="a=1")
    assert str(origin) == "<command line> (a=1)"


def test_template_origin_prints_as_file_and_line():
    assert str(Origin("/p/c.yaml", 7, "c.yaml")) == "/p/c.yaml:7"


# ---- ConfigMapping ----------------------------------------------------------------------------


def test_config_mapping_set_records_the_replaced_value():
    mapping = ConfigMapping()
    first, second = Origin("f", 1), Origin("f", 2)
    mapping.set("k", 1, first)
    mapping.set("k", 2, second)
    assert mapping.provenance["k"] == Provenance(second, [(first, 1)])


def test_config_mapping_delete_forgets_provenance():
    mapping = ConfigMapping()
    mapping.set("k", 1, Origin("f", 1))
    mapping.delete("k")
    assert "k" not in mapping and "k" not in mapping.provenance
