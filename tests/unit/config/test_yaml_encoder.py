"""to_yaml: a graph written back as config YAML re-parses to the same graph, sharing included."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forgather.config.graph import load_config_string
from forgather.config.materialize import Builder
from forgather.config.nodes import (
    CallableNode,
    ConfigList,
    ConfigMapping,
    DListNode,
    SingletonNode,
    VarNode,
)
from forgather.config.overrides import apply_overrides
from forgather.config.yaml_encoder import to_flow, to_yaml
from forgather.config.yaml_graph import parse_graph

pytestmark = pytest.mark.unit


def assert_same_graph(a: Any, b: Any) -> None:
    """Same node types, specs, names, arguments and scalars, and the same sharing (isomorphic)."""
    pairs: dict[int, int] = {}
    keep: list[Any] = []

    def same(x: Any, y: Any, path: str) -> None:
        if isinstance(x, CallableNode | VarNode | dict | list):
            if id(x) in pairs:
                assert pairs[id(x)] == id(y), f"{path}: sharing differs"
                return
            assert id(y) not in pairs.values(), f"{path}: shared in the copy only"
            pairs[id(x)] = id(y)
            keep.extend((x, y))
        assert type(x) is type(y), f"{path}: {type(x).__name__} != {type(y).__name__}"
        if isinstance(x, CallableNode):
            assert (x.spec, x.name) == (y.spec, y.name), path
            same(list(x.args), list(y.args), f"{path}.args")
            same(dict(x.kwargs), dict(y.kwargs), f"{path}.kwargs")
            same(x.latent_args, y.latent_args, f"{path}.latent_args")
            same(x.submodule_searchpath, y.submodule_searchpath, f"{path}.submodule_searchpath")
        elif isinstance(x, VarNode):
            assert (x.name, x.has_default) == (y.name, y.has_default), path
            same(x.default, y.default, f"{path}.default")
        elif isinstance(x, dict):
            assert list(x) == list(y), f"{path}: keys differ"
            for key in x:
                same(x[key], y[key], f"{path}.{key}")
        elif isinstance(x, list | tuple):
            assert len(x) == len(y), f"{path}: lengths differ"
            for index, (p, q) in enumerate(zip(x, y, strict=True)):
                same(p, q, f"{path}.{index}")
        else:
            assert x == y or (x != x and y != y), f"{path}: {x!r} != {y!r}"

    same(a, b, "")


def round_trip(graph: Any) -> Any:
    text = to_yaml(graph)
    copy = parse_graph(text)
    assert_same_graph(graph, copy)
    assert to_yaml(copy) == text  # stable
    return copy


def graph_of(text: str) -> Any:
    return parse_graph(textwrap.dedent(text))


ROUND_TRIPS = {
    "scalars": "a: 1\nb: 1.5\nc: true\nd: null\ne: text\nf: -3\ng: .inf\nh: ''\n",
    "nested containers": "a: {b: [1, {c: [2, 3]}], d: []}\ne: {}\nf: [[], [[1]]]\n",
    "non-string keys": "1: a\nnull: b\n2.5: c\nfalse: d\n",
    "singleton positional": "m: !singleton:fractions:Fraction [1, 3]\n",
    "singleton keywords": "m: !singleton:fractions:Fraction {numerator: 1, denominator: 3}\n",
    "singleton both": "m: !singleton:fractions:Fraction {arg0: 1, denominator: 3}\n",
    "singleton no args": "m: !singleton:builtins:list\n",
    "call tag": "m: !call:builtins:abs [-1]\n",
    "named nodes": "m: !singleton:builtins:abs@absolute [-1]\nn: !factory:builtins:list@lst []\n",
    "factory": "m: !factory:builtins:list [[1, 2]]\n",
    "partial": "m: !partial:builtins:sorted {key: !partial:builtins:abs []}\n",
    "lambda becomes partial": "m: !lambda:builtins:sorted {reverse: true}\n",
    "meta": "m: !meta:builtins:repr [!singleton:builtins:abs [-1]]\n",
    "var": "a: !var name\nb: !var {name: other, default: 3}\nc: !var {name: x, default: {k: [1]}}\n",
    "var default node": "a: !var {name: x, default: !singleton:builtins:abs [-2]}\n",
    "dict": "a: !dict {x: 1, arg0: 2, latent_args: 3}\nb: !dict:@named {y: 2}\nc: !dict\n",
    "list": "a: !list [1, 2]\nb: !list:@named [3]\nc: !list []\n",
    "tuple": "a: !tuple [1, 2]\nb: !tuple []\nc: !tuple:@named [[]]\n",
    "dlist": "a: !dlist {x: 1, y: null, z: !singleton:builtins:abs [-1]}\nb: !dlist:@dl {}\n",
    "explicit args form": "m: !singleton:builtins:dict {args: [[[a, 1]]], kwargs: {args: 2}}\n",
    "reserved keys": (
        "m: !singleton:fractions:Fraction\n"
        "  numerator: 1\n"
        "  submodule_searchpath: [/tmp]\n"
        "  latent_args: !var extra\n"
    ),
    "container spec with args": "m: !singleton:named_dict [[[a, 1]]]\nn: !factory:named_list [1]\n",
    "dot keys": ".define: &d !singleton:builtins:abs [-1]\nmain: *d\n",
    "multi-line strings": 'a: |\n  line one\n  line two\nb: "trailing space \\n"\nc: "x\\ty"\n',
    "unicode": "a: héllo ✓\nb: 'quote '' inside'\nc: '#not a comment'\nd: 'a: b'\n",
    "shared containers": "a: &l [1, 2]\nb: *l\nc: &m {x: 1}\nd: [*m, *m]\n",
    "shared var": "a: &v !var x\nb: [*v]\n",
    "scalar root": "42\n",
    "node root": "!singleton:builtins:abs [-1]\n",
}


@pytest.mark.parametrize("text", ROUND_TRIPS.values(), ids=ROUND_TRIPS.keys())
def test_to_yaml_round_trips_graph(text):
    round_trip(parse_graph(text))


def test_to_yaml_round_trips_a_rendered_config_and_builds_equal_objects():
    config = load_config_string(
        textwrap.dedent(
            """
            {% set n = 3 %}
            .define: &frac !singleton:fractions:Fraction@frac [1, {{ n }}]
            main:
              a: *frac
              b: [*frac, !tuple [], !factory:builtins:list [[1]]]
              c: !partial:builtins:sorted {reverse: true}
              d: !dlist {x: 1, y: 2}
            """
        )
    )
    copy = round_trip(config.graph)
    original = Builder().build(config.graph["main"])
    rebuilt = Builder().build(copy["main"])
    assert rebuilt["a"] == original["a"]
    assert rebuilt["b"] == original["b"]
    assert rebuilt["c"]([1, 3, 2]) == original["c"]([1, 3, 2]) == [3, 2, 1]
    assert rebuilt["d"] == original["d"] == [1, 2]


def test_to_yaml_preserves_singleton_sharing_with_named_anchors():
    graph = graph_of(
        """
        a: &x !singleton:builtins:list@shared [[1]]
        b: *x
        c: [*x]
        """
    )
    text = to_yaml(graph)
    assert "a: &shared !singleton:builtins:list@shared" in text
    assert "b: *shared" in text
    assert text.count("!singleton:builtins:list") == 1
    copy = parse_graph(text)
    assert copy["a"] is copy["b"] is copy["c"][0]
    built = Builder().build(copy)
    assert built["a"] is built["b"] is built["c"][0]


def test_to_yaml_anchors_unnamed_shared_nodes_without_clashing_with_names():
    graph = graph_of(
        """
        a: &x !singleton:builtins:list [[1]]
        b: *x
        c: &y !singleton:builtins:list@id001 [[2]]
        d: *y
        e: &z !singleton:builtins:list@odd.name-1 [[3]]
        f: *z
        """
    )
    copy = round_trip(graph)
    assert copy["a"] is copy["b"] and copy["c"] is copy["d"] and copy["e"] is copy["f"]
    assert copy["a"] is not copy["c"]


def test_to_yaml_does_not_anchor_nodes_used_once():
    text = to_yaml(graph_of("a: !singleton:builtins:abs@solo [-1]\nb: [1, 2]\n"))
    assert "&" not in text and "*" not in text
    assert "!singleton:builtins:abs@solo" in text


def test_to_yaml_factories_referenced_twice_still_build_separately():
    graph = graph_of("a: &f !factory:builtins:list [[1]]\nb: *f\n")
    copy = round_trip(graph)
    built = Builder().build(copy)
    assert built["a"] == built["b"] == [1]
    assert built["a"] is not built["b"]


def test_to_yaml_empty_tuple_round_trips_as_tuple():
    graph = graph_of("a: !tuple []\nb: !tuple [!tuple []]\n")
    text = to_yaml(graph)
    assert "a: !tuple []" in text
    built = Builder().build(parse_graph(text))
    assert built == {"a": (), "b": ((),)}
    # a plain Python tuple in a graph (e.g. set by code) is written as !tuple too
    assert Builder().build(parse_graph(to_yaml({"t": (), "u": (1, "2")}))) == {
        "t": (),
        "u": (1, "2"),
    }


@pytest.mark.parametrize(
    "value",
    [
        "1",
        "true",
        "null",
        "1e3",
        "1.5",
        "-2",
        "0x1F",
        "0o17",
        ".inf",
        ".nan",
        "~",
        "yes",
        "off",
        "False",
        "2024-01-01",
        "",
        " ",
        "@x",
        "!tag",
        "*alias",
        "&a",
        "- item",
        "key: value",
        "# c",
        "[1]",
        "{a: 1}",
        "'quoted'",
        '"dq"',
        "a\nb",
        "trailing\n",
        "\ttab",
    ],
)
def test_to_yaml_keeps_strings_that_look_like_other_types_as_strings(value):
    text = to_yaml(
        {"s": value, "l": [value], "n": SingletonNode("builtins:str", ConfigList([value]))}
    )
    copy = parse_graph(text)
    assert copy["s"] == value and type(copy["s"]) is str
    assert copy["l"] == [value]
    assert list(copy["n"].args) == [value]


def test_to_yaml_quotes_ambiguous_strings():
    text = to_yaml({"a": "1", "b": "true", "c": "null", "d": "1e3"})
    assert text == "a: '1'\nb: 'true'\nc: 'null'\nd: '1e3'\n"


def test_to_yaml_writes_readable_block_style_with_two_space_indent():
    graph = graph_of(
        """
        model: !singleton:torch.nn:Sequential@model
          - !singleton:torch.nn:Linear {in_features: 4, out_features: 8}
          - !singleton:torch.nn:ReLU []
        optimizer: !partial:torch.optim:AdamW
          lr: 0.001
          betas: [0.9, 0.99]
        steps: !var {name: steps, default: 10}
        """
    )
    assert to_yaml(graph) == textwrap.dedent(
        """\
        model: !singleton:torch.nn:Sequential@model
          - !singleton:torch.nn:Linear
            in_features: 4
            out_features: 8
          - !singleton:torch.nn:ReLU []
        optimizer: !partial:torch.optim:AdamW
          lr: 0.001
          betas: [0.9, 0.99]
        steps: !var {name: steps, default: 10}
        """
    )


def test_to_yaml_writes_positional_and_keyword_args_as_argn_mapping():
    node = SingletonNode(
        "fractions:Fraction", ConfigList([1]), ConfigMapping({"denominator": 3}), name="f"
    )
    assert to_yaml(node) == "!singleton:fractions:Fraction@f\narg0: 1\ndenominator: 3\n"
    assert Builder().build(parse_graph(to_yaml(node))) == Builder().build(node)


def test_to_yaml_never_writes_lambda_tag():
    text = to_yaml(graph_of("a: !lambda:builtins:sorted []\n"))
    assert text == "a: !partial:builtins:sorted []\n"


def test_to_yaml_dlist_keeps_keys_and_leaves_out_deleted_entries():
    config = load_config_string("items: !dlist\n  a: 1\n  b: 2\n  c: 3\n")
    apply_overrides(config.graph, ["~items.b"])
    text = to_yaml(config.graph)
    assert text == "items: !dlist\n  a: 1\n  c: 3\n"
    copy = parse_graph(text)
    assert isinstance(copy["items"], DListNode)
    assert Builder().build(copy["items"]) == [1, 3]


def test_to_yaml_keeps_submodule_searchpath_and_latent_args_as_keys():
    graph = graph_of(
        """
        m: !singleton:/tmp/mod.py:Thing
          - 1
        """
    )
    graph["m"].submodule_searchpath = ConfigList(["/tmp"])
    graph["m"].latent_args = VarNode("extra")
    text = to_yaml(graph)
    assert "submodule_searchpath: [/tmp]" in text and "latent_args: !var extra" in text
    copy = round_trip(graph)
    assert list(copy["m"].args) == [1]


def test_to_flow_writes_one_line():
    graph = graph_of("a: !singleton:builtins:abs@x [-1]\nb: {c: [1, '2']}\n")
    assert to_flow(graph) == "{a: !singleton:builtins:abs@x [-1], b: {c: [1, '2']}}"
    assert parse_graph(to_flow(graph))["b"] == {"c": [1, "2"]}


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=30),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=8), inner, max_size=4),
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(values)
def test_to_yaml_round_trips_arbitrary_plain_data(value):
    copy = parse_graph(to_yaml({"v": value}))
    assert copy["v"] == value
    assert repr(copy["v"]) == repr(value)  # same types (no 1 == 1.0 == True surprises)
