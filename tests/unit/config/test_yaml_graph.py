"""Parsing rendered YAML into the config graph: tags, names, arguments, anchors, keys and errors."""

from __future__ import annotations

import warnings

import pytest

from forgather.config import errors
from forgather.config.environment import ConfigEnvironment
from forgather.config.graph import load_config, load_config_string
from forgather.config.nodes import (
    ConfigList,
    ConfigMapping,
    DListNode,
    FactoryNode,
    MetaNode,
    PartialNode,
    SingletonNode,
    VarNode,
)
from forgather.config.yaml_graph import ColonlessNameWarning, parse_graph, split_tag

pytestmark = pytest.mark.unit


def parse(text: str):
    return parse_graph(text)


def write(directory, name: str, text: str) -> str:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def load_file(tmp_path, text: str, name: str = "c.yaml"):
    path = write(tmp_path, name, text)
    return load_config(ConfigEnvironment([tmp_path]), name), path


# ---- tags -------------------------------------------------------------------------------------


def test_singleton_tag_makes_a_singleton_node():
    node = parse("a: !singleton:collections:OrderedDict {}")["a"]
    assert type(node) is SingletonNode and node.spec == "collections:OrderedDict"


def test_call_tag_is_a_singleton():
    assert type(parse("a: !call:len [[1]]")["a"]) is SingletonNode


def test_factory_tag_makes_a_factory_node():
    assert type(parse("a: !factory:list []")["a"]) is FactoryNode


def test_partial_tag_makes_a_partial_node():
    assert type(parse("a: !partial:max [1]")["a"]) is PartialNode


def test_lambda_tag_is_a_partial():
    assert type(parse("a: !lambda:max [1]")["a"]) is PartialNode


def test_meta_tag_makes_a_meta_node():
    assert type(parse("a: !meta:repr [1]")["a"]) is MetaNode


def test_var_tag_with_a_name():
    node = parse("a: !var seed")["a"]
    assert isinstance(node, VarNode)
    assert (node.name, node.has_default) == ("seed", False)


def test_var_tag_with_a_default():
    node = parse("a: !var {name: seed, default: 7}")["a"]
    assert (node.name, node.default, node.has_default) == ("seed", 7, True)


def test_var_tag_with_a_null_default_has_a_default():
    node = parse("a: !var {name: seed, default: ~}")["a"]
    assert node.has_default and node.default is None


def test_dict_tag_builds_a_dict():
    config = load_config_string("a: !dict\n  x: 1\n  y: 2")
    assert config.build("a") == {"x": 1, "y": 2}


def test_list_tag_builds_a_list():
    assert load_config_string("a: !list [1, 2]").build("a") == [1, 2]


def test_tuple_tag_builds_a_tuple():
    assert load_config_string("a: !tuple [1, 2]").build("a") == (1, 2)


def test_empty_tuple_builds_an_empty_tuple():
    assert load_config_string("a: !tuple").build("a") == ()


def test_empty_list_and_dict_build_empty_containers():
    config = load_config_string("a: !list\nb: !dict")
    assert (config.build("a"), config.build("b")) == ([], {})


def test_dlist_tag_makes_a_dlist_node():
    node = parse("a: !dlist\n  x: 1\n  y: 2")["a"]
    assert isinstance(node, DListNode) and node.values_list() == [1, 2]


def test_dlist_drops_null_values():
    assert load_config_string("a: !dlist\n  x: 1\n  y: ~\n  z: 3").build("a") == [1, 3]


def test_dlist_null_key_alone_is_an_empty_list():
    assert load_config_string("a: !dlist\n  null: ~").build("a") == []


def test_dlist_keeps_key_order():
    assert load_config_string("a: !dlist\n  b: 2\n  a: 1\n  c: 3").build("a") == [2, 1, 3]


def test_dlist_redeclared_null_deletes_an_item():
    text = "a: !dlist\n  x: 1\n  y: 2\n  x: ~"
    assert load_config_string(text).build("a") == [2]


def test_dlist_redeclared_key_keeps_its_place():
    text = "a: !dlist\n  x: 1\n  y: 2\n  x: 3"
    assert load_config_string(text).build("a") == [3, 2]


def test_unknown_tag_is_an_error():
    with pytest.raises(errors.UnknownTagError, match="!bogus"):
        parse("a: !bogus 1")


def test_unknown_tag_error_lists_known_tags():
    with pytest.raises(errors.UnknownTagError, match="!factory"):
        parse("a: !nope:x 1")


def test_callable_tag_without_a_spec_is_an_import_spec_error():
    with pytest.raises(errors.ImportSpecError, match="needs an import spec"):
        parse("a: !call 1")


def test_container_tag_with_a_spec_is_an_error():
    with pytest.raises(errors.UnknownTagError, match="takes no import spec"):
        parse("a: !dict:builtins:dict {}")


def test_tuple_of_a_mapping_is_an_error():
    with pytest.raises(errors.GraphError, match="takes a sequence"):
        parse("a: !tuple {x: 1}")


def test_dlist_of_a_sequence_is_an_error():
    with pytest.raises(errors.GraphError, match="takes a mapping"):
        parse("a: !dlist [1]")


def test_var_without_a_name_is_an_error():
    with pytest.raises(errors.GraphError, match="needs a name"):
        parse("a: !var")


def test_var_with_unknown_keys_is_an_error():
    with pytest.raises(errors.GraphError, match="name: NAME"):
        parse("a: !var {name: x, other: 1}")


def test_standard_yaml_tags_still_work():
    assert parse("a: !!str 12")["a"] == "12"


def test_python_yaml_tags_are_refused():
    with pytest.raises(errors.ConfigError):
        parse("a: !!python/name:os.system ''")


# ---- names ------------------------------------------------------------------------------------


def test_split_tag_separates_kind_spec_and_name():
    assert split_tag("!singleton:pkg.mod:Cls@model") == ("singleton", "pkg.mod:Cls", "model")


def test_split_tag_without_a_name():
    assert split_tag("!call:os.path:join") == ("call", "os.path:join", None)


def test_split_tag_keeps_at_sign_in_file_paths():
    assert split_tag("!call:/a/b@c/x.py:f") == ("call", "/a/b@c/x.py:f", None)


def test_named_singleton_keeps_its_name():
    node = parse("a: !singleton:dict@model {}")["a"]
    assert (node.spec, node.name) == ("dict", "model")


def test_container_name_after_colon():
    node = parse("a: !dict:@trainer_args\n  x: 1")["a"]
    assert node.name == "trainer_args"


def test_colonless_container_name_warns_and_keeps_the_name():
    with pytest.warns(ColonlessNameWarning, match="!dict:@args"):
        node = parse("a: !dict@args\n  x: 1")["a"]
    assert node.name == "args"


def test_colon_container_name_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parse("a: !dict:@args\n  x: 1")


def test_duplicate_explicit_names_are_an_error():
    with pytest.raises(errors.DuplicateNameError, match="@n"):
        parse("a: !dict:@n {x: 1}\nb: !dict:@n {y: 2}")


def test_duplicate_name_error_names_file_and_line(tmp_path):
    with pytest.raises(errors.DuplicateNameError) as info:
        load_file(tmp_path, "a: !dict:@n\n  x: 1\nb: 2\nc: !list:@n [1]\n")
    assert (info.value.origin.file, info.value.origin.line) == (str(tmp_path / "c.yaml"), 4)


def test_alias_of_a_named_node_is_not_a_duplicate():
    graph = parse("a: &a !dict:@n {x: 1}\nb: *a")
    assert graph["a"] is graph["b"]


# ---- arguments --------------------------------------------------------------------------------


def test_sequence_gives_positional_args():
    node = parse("a: !call:pow [2, 3]")["a"]
    assert list(node.args) == [2, 3] and dict(node.kwargs) == {}


def test_mapping_gives_keyword_args():
    node = parse("a: !call:dict {x: 1}")["a"]
    assert list(node.args) == [] and dict(node.kwargs) == {"x": 1}


def test_scalar_after_a_callable_tag_is_one_positional_arg():
    assert load_config_string("a: !call:str.upper hello").build("a") == "HELLO"


def test_scalar_with_spaces_is_still_one_arg():
    assert load_config_string('a: !call:len "a b c"').build("a") == 5


def test_scalar_arg_is_typed_like_plain_yaml():
    assert parse("a: !call:abs -3")["a"].args == [-3]
    assert parse("a: !call:str '3'")["a"].args == ["3"]


def test_empty_callable_tag_has_no_arguments():
    node = parse("a: !call:dict")["a"]
    assert list(node.args) == [] and dict(node.kwargs) == {}


def test_arg_keys_are_positional():
    node = parse("a: !call:pow\n  arg0: 2\n  arg1: 5")["a"]
    assert list(node.args) == [2, 5] and dict(node.kwargs) == {}


def test_arg_keys_are_ordered_by_number_not_position():
    assert load_config_string("a: !call:pow\n  arg1: 3\n  arg0: 2").build("a") == 8


def test_arg_keys_order_numerically():
    node = parse("a: !call:max\n  arg10: 10\n  arg2: 2\n  arg1: 1")["a"]
    assert list(node.args) == [1, 2, 10]


def test_arg_keys_mix_with_keyword_args():
    assert load_config_string("a: !call:int\n  arg0: ff\n  base: 16").build("a") == 255


def test_explicit_args_and_kwargs():
    node = parse("a: !call:dict\n  args: [[[x, 1]]]\n  kwargs: {y: 2}")["a"]
    assert list(node.args) == [[["x", 1]]] and dict(node.kwargs) == {"y": 2}


def test_explicit_args_alone():
    assert load_config_string("a: !call:pow\n  args: [2, 4]").build("a") == 16


def test_explicit_kwargs_alone():
    assert load_config_string("a: !call:dict\n  kwargs: {z: 1}").build("a") == {"z": 1}


def test_args_beside_other_keys_is_an_ordinary_kwarg():
    node = parse("a: !call:dict\n  args: 1\n  other: 2")["a"]
    assert dict(node.kwargs) == {"args": 1, "other": 2}


def test_explicit_args_must_be_a_list():
    with pytest.raises(errors.GraphError, match="'args' must be a list"):
        parse("a: !call:dict\n  args: 1")


def test_submodule_searchpath_is_reserved():
    node = parse("a: !call:x.py:f\n  submodule_searchpath: /p\n  y: 1")["a"]
    assert node.submodule_searchpath == "/p" and dict(node.kwargs) == {"y": 1}


def test_latent_args_is_reserved():
    node = parse("a: !call:dict\n  latent_args: !dict {x: 1}\n  y: 1")["a"]
    assert isinstance(node.latent_args, SingletonNode) and dict(node.kwargs) == {"y": 1}


def test_latent_args_merge_into_kwargs():
    text = "a: !call:dict\n  y: 1\n  latent_args: !dict {x: 2}"
    assert load_config_string(text).build("a") == {"y": 1, "x": 2}


# ---- anchors, aliases, merge keys, duplicate keys ---------------------------------------------


def test_alias_refers_to_the_same_node():
    graph = parse("a: &x !call:list []\nb: *x")
    assert graph["a"] is graph["b"]


def test_alias_of_a_plain_mapping_builds_a_copy():
    config = load_config_string("a: &x {k: 1}\nmain: !tuple [*x, *x]")
    first, second = config.build("main")
    assert first == second and first is not second


def test_alias_of_a_singleton_builds_the_same_object():
    config = load_config_string("a: &x !dict {k: 1}\nmain: !tuple [*x, *x]")
    first, second = config.build("main")
    assert first is second


def test_merge_key_copies_keys():
    graph = parse("base: &b {x: 1, y: 2}\nchild:\n  <<: *b\n  z: 3")
    assert dict(graph["child"]) == {"x": 1, "y": 2, "z": 3}


def test_key_after_merge_wins():
    graph = parse("base: &b {x: 1, y: 2}\nchild:\n  <<: *b\n  y: 5")
    assert graph["child"]["y"] == 5


def test_merge_key_works_inside_a_callable_node():
    text = "base: &b {x: 1}\na: !call:dict\n  <<: *b\n  y: 2"
    assert load_config_string(text).build("a") == {"x": 1, "y": 2}


def test_merge_key_list_merges_several():
    graph = parse("a: &a {x: 1}\nb: &b {y: 2}\nc:\n  <<: [*a, *b]")
    assert dict(graph["c"]) == {"x": 1, "y": 2}


def test_merge_key_precedence_follows_the_yaml_spec():
    """In `<<: [*a, *b]` the earlier mapping wins a key both have; keys written in the mapping
    itself win over merged ones, before or after the `<<` line."""
    text = "a: &a {x: 1, y: 1, w: 1}\nb: &b {x: 2, z: 2, w: 2}\nc:\n  w: 0\n  <<: [*a, *b]\n  y: 3"
    assert dict(parse(text)["c"]) == {"w": 0, "x": 1, "y": 3, "z": 2}
    assert load_config_string(text).build("c") == {"w": 0, "x": 1, "y": 3, "z": 2}


def test_merge_of_a_sequence_is_a_yaml_error():
    with pytest.raises(errors.YamlSyntaxError, match="merg"):
        parse("a: &a [1]\nb:\n  <<: *a")


def test_later_duplicate_key_wins():
    assert parse("a: 1\nb: 2\na: 3")["a"] == 3


def test_duplicate_key_keeps_the_first_position():
    assert list(parse("a: 1\nb: 2\na: 3")) == ["a", "b"]


def test_later_duplicate_key_wins_in_nested_mappings():
    assert parse("m:\n  x: 1\n  x: 2")["m"]["x"] == 2


def test_later_duplicate_key_wins_in_callable_kwargs():
    assert load_config_string("a: !call:dict\n  x: 1\n  x: 2").build("a") == {"x": 2}


def test_dot_keys_are_not_targets():
    config = load_config_string(".define: &d !dict {x: 1}\nmain: *d")
    assert list(config.targets) == ["main"]
    assert config.build("main") == {"x": 1}


def test_dot_key_cannot_be_built_as_a_target():
    config = load_config_string(".define: 1\nmain: 2")
    with pytest.raises(errors.TargetNotFoundError):
        config.build(".define")


def test_unknown_target_is_an_error():
    with pytest.raises(errors.TargetNotFoundError, match="absent.*targets: other"):
        load_config_string("other: 1").build("absent")


def test_undefined_alias_is_a_yaml_error():
    with pytest.raises(errors.YamlSyntaxError, match="undefined alias"):
        parse("a: *nowhere")


def test_recursive_alias_is_a_config_error():
    with pytest.raises(errors.ConfigError):
        parse("a: &a [*a]")


# ---- scalars ----------------------------------------------------------------------------------


def test_dates_stay_strings():
    assert parse("d: 2024-01-01")["d"] == "2024-01-01"


def test_timestamps_stay_strings():
    assert parse("d: 2024-01-01 10:00:00")["d"] == "2024-01-01 10:00:00"


def test_numbers_bools_and_nulls_are_typed():
    graph = parse("i: 3\nf: 1.5e-3\nb: true\nn: ~")
    assert (graph["i"], graph["f"], graph["b"], graph["n"]) == (3, 1.5e-3, True, None)


def test_containers_are_config_containers():
    graph = parse("m: {a: 1}\nl: [1]")
    assert isinstance(graph, ConfigMapping)
    assert isinstance(graph["m"], ConfigMapping) and isinstance(graph["l"], ConfigList)


def test_empty_document_is_none():
    assert parse("") is None


def test_unhashable_key_is_a_graph_error():
    with pytest.raises(errors.GraphError, match="unhashable"):
        parse("? [1]\n: 2")


# ---- errors name the template file and line ---------------------------------------------------


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    with pytest.raises(errors.YamlSyntaxError) as info:
        load_file(tmp_path, "a: 1\nb: : 2\nc: 3\n")
    assert (info.value.origin.file, info.value.origin.line) == (str(tmp_path / "c.yaml"), 2)


@pytest.mark.parametrize(
    ("text", "line", "noticed"),
    [
        ('main:\n  a: "unclosed\n  b: 2\n  c: 3\n', 2, 4),  # a quote never closed
        ("a: 1\nb: [1, 2\nc: 3\n", 2, 3),  # a bracket never closed
        ("a: 1\nb: {x: 1,\n  y: 2\nc: 3\n", 2, 4),
    ],
)
def test_something_left_open_is_named_where_it_opens(tmp_path, text, line, noticed):
    with pytest.raises(errors.YamlSyntaxError) as info:
        load_file(tmp_path, text)
    assert (info.value.origin.file, info.value.origin.line) == (str(tmp_path / "c.yaml"), line)
    assert f"(noticed at line {noticed})" in info.value.message


def test_a_yaml_error_in_a_sub_template_names_its_own_file_line(tmp_path):
    """`#---- name ----` sub-templates are carved out of a file: the line is the file's."""
    text = 'main:\n  a: 1\n-- include "inner"\n#---- inner ----\nx: 1\ny: "open\nz: 3\n'
    with pytest.raises(errors.YamlSyntaxError) as info:
        load_file(tmp_path, text)
    assert (info.value.origin.file, info.value.origin.line) == (str(tmp_path / "c.yaml"), 6)


def test_yaml_syntax_error_in_a_parent_line_names_the_parent(tmp_path):
    parent = write(tmp_path, "parent.yaml", "a: 1\nb: : :\n-- block body\n-- endblock\n")
    with pytest.raises(errors.YamlSyntaxError) as info:
        load_file(tmp_path, "-- extends 'parent.yaml'\n[body]\nc: 3\n")
    assert (info.value.origin.file, info.value.origin.line) == (parent, 2)


def test_yaml_syntax_error_in_a_child_line_names_the_child(tmp_path):
    write(tmp_path, "parent.yaml", "a: 1\n-- block body\n-- endblock\n")
    with pytest.raises(errors.YamlSyntaxError) as info:
        load_file(tmp_path, "-- extends 'parent.yaml'\n[body]\nc: 3\nd: [\n")
    assert info.value.origin.file == str(tmp_path / "c.yaml")
    assert info.value.origin.line in (4, 5)


def test_unknown_tag_names_file_and_line(tmp_path):
    with pytest.raises(errors.UnknownTagError) as info:
        load_file(tmp_path, "a: 1\n\nb: !bogus:x 3\n")
    assert (info.value.origin.file, info.value.origin.line) == (str(tmp_path / "c.yaml"), 3)


def test_unknown_tag_in_an_included_template_names_that_file(tmp_path):
    part = write(tmp_path, "part.yaml", "x: 1\ny: !wrong 2\n")
    with pytest.raises(errors.UnknownTagError) as info:
        load_file(tmp_path, "a: 1\n-- include 'part.yaml'\n")
    assert (info.value.origin.file, info.value.origin.line) == (part, 2)


def test_control_character_is_a_yaml_error_with_a_line():
    with pytest.raises(errors.YamlSyntaxError, match="special characters") as info:
        load_config_string("a: 1\nb: \x0c\n")
    assert info.value.origin.line == 2


def test_error_message_names_the_origin():
    with pytest.raises(errors.ConfigError) as info:
        load_config_string("a: 1\nb: !bogus 2", name="mine")
    assert str(info.value).startswith("<string:mine>:2: unknown tag")


def test_origin_of_string_parse_without_rendering():
    with pytest.raises(errors.UnknownTagError) as info:
        parse_graph("a: 1\nb: !bogus 2", source="text")
    assert (info.value.origin.file, info.value.origin.line) == ("text", 2)
