"""Property tests: random and garbled configs through the whole pipeline raise only ConfigError.

Each example is rendered, parsed, and every target is built (plus key-path lookups and overrides); any
exception that is not a `forgather.config.errors.ConfigError` is an engine bug. Only configs whose callables
are on an allow-list of cheap stdlib or tour-project callables are built, so nothing slow or harmful runs.
Set FORGATHER_FUZZ_SCALE (e.g. 20) to run proportionally more examples.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forgather.config.dynamic_args import declared_args, parse_flags
from forgather.config.environment import ConfigEnvironment
from forgather.config.errors import ConfigError
from forgather.config.graph import Config, load_config, load_config_string, walk
from forgather.config.nodes import CallableNode, iter_nodes
from forgather.config.overrides import apply_overrides, is_override, parse_override
from forgather.project import MetaConfig, Project, project_globals

pytestmark = pytest.mark.unit

SCALE = max(1, int(os.environ.get("FORGATHER_FUZZ_SCALE", "1")))
TOUR = Path(__file__).resolve().parents[3] / "examples" / "config_tour"
TEMPLATES = TOUR / "templates"
SEARCHPATH = MetaConfig.load(TOUR).searchpath
GLOBALS = project_globals(TOUR, None)
TEMPLATE_NAMES = sorted(
    path.relative_to(TEMPLATES).as_posix() for path in TEMPLATES.rglob("*.yaml")
)
CONFIG_NAMES = [name for name in TEMPLATE_NAMES if name.startswith("configs/")]
SOURCES = {name: (TEMPLATES / name).read_text() for name in TEMPLATE_NAMES}
# Small sizes keep generated configs quick; the build needs the values of the tour's `!var`s.
RENDER_VARS = {"n_layers": 3}
BUILD_VARS = {"output_dir": "/tmp/fuzz-output", "x": 1}

SAFE_SPECS = {
    "list", "dict", "tuple", "len", "max", "min", "sorted", "pow", "int", "float", "str",
    "str.upper", "str.join", "abs", "repr", "named_dict", "named_list", "named_tuple",
    "getitem", "getattr", "call", "keys", "values", "items",
    "fractions:Fraction", "os.path:join", "collections:OrderedDict",
    # bad specs are safe: they fail to import
    "nosuch", "nosuch.module:Thing", "/nonexistent/file.py:f", ".relative:x", "a:b:c",
}  # fmt: skip

# Tags and fragments the mutations insert: every construct of the language, but no numbers (so that no
# mutation can turn a small number into a huge one) and only allow-listed callables.
TOKENS = [
    "!singleton:list", "!call:str.upper", "!factory:dict", "!partial:max", "!lambda:min",
    "!meta:repr", "!call:getitem", "!call:len", "!call:nosuch.module:Thing", "!call:nosuch",
    "!call:/nonexistent/file.py:f", "!call:.relative:x", "!call:a:b:c", "!call", "!bogus",
    "!var x", "!var {name: y, default: z}", "!var", "!dict", "!dict:@dup", "!dict@dup", "!list",
    "!tuple", "!dlist", "!list:@dup", "!!str", "!!binary", "&anchor", "*anchor", "<<: *anchor",
    "args:", "kwargs:", "latent_args:", "submodule_searchpath:", "arg0:", "arg1:", "null: ~", "key: ~",
    ".dot:", "-- ", "== ", "=> ", "<< ", ">> ", "\\-- ", "## ", "[block]", "[block!]", "[", "]",
    "{", "}", "{{", "}}", "{%", "%}", "{#", "#}", "'", '"', ":", ": ", "- ", "? ", "|", ">",
    "-- set v = 'x'", "-- if true", "-- endif", "-- for i in range(three)", "-- endfor",
    "-- block body", "-- endblock", "== super()", "-- extends 'project.yaml'",
    "-- include 'configs/01_basics.yaml'", "-- extends ns.parent", "#---- fuzz.sub ----",
    "-- include 'fuzz.sub'", "{{ nope }}", "{{ x | toyaml }}", "{{ joinpath(project_dir, q) }}",
    "\t", "  ", "\x00", "\x0c", "\ufeff", "\ue000", "\ue001", "\ue000q\ue001", "%", "@",
]  # fmt: skip


def is_safe(value) -> bool:
    """Whether every callable reachable from `value` is allow-listed (or a tour module)."""
    for node in iter_nodes(value):
        if (
            isinstance(node, CallableNode)
            and node.spec not in SAFE_SPECS
            and not node.spec.startswith(str(TOUR))
        ):
            return False
    return True


def exercise(config: Config) -> None:
    """Build every safe target in one build, look up every key path, then build again fresh."""
    builder = config.builder(**BUILD_VARS)
    for name in list(config.targets):
        target = config.targets[name]
        if not is_safe(target):
            continue
        try:
            built = builder.build(target)
            if callable(built) and type(built).__name__ == "BuiltPartial":
                built()
        except ConfigError:
            pass
    for path, *_ in list(walk(config.graph))[:200]:
        with contextlib.suppress(ConfigError):
            config.lookup(path)


def run(make_config) -> None:
    """Run one example; only ConfigError may escape `make_config` and the builds."""
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        try:
            config = make_config()
        except ConfigError as error:
            assert isinstance(error.message, str)
            str(error)
            return
        exercise(config)


def tour_env() -> ConfigEnvironment:
    return ConfigEnvironment(SEARCHPATH, GLOBALS)


# ---- strategies -------------------------------------------------------------------------------

mutation = st.one_of(
    st.tuples(st.just("delete"), st.integers(0, 10_000)),
    st.tuples(st.just("duplicate"), st.integers(0, 10_000)),
    st.tuples(st.just("swap"), st.integers(0, 10_000), st.integers(0, 10_000)),
    st.tuples(st.just("tag"), st.integers(0, 10_000), st.integers(0, 200), st.sampled_from(TOKENS)),
    st.tuples(st.just("line"), st.integers(0, 10_000), st.sampled_from(TOKENS)),
    st.tuples(st.just("indent"), st.integers(0, 10_000), st.integers(0, 12)),
    st.tuples(st.just("tab"), st.integers(0, 10_000)),
)


def mutate(text: str, mutations) -> str:
    lines = text.split("\n")
    for op, *params in mutations:
        if not lines:
            lines = [""]
        i = params[0] % len(lines)
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = params[1] % len(lines)
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "tag":
            pos = params[1] % (len(lines[i]) + 1)
            lines[i] = lines[i][:pos] + params[2] + lines[i][pos:]
        elif op == "line":
            lines.insert(i, params[1])
        elif op == "indent":
            lines[i] = " " * params[1] + lines[i].lstrip()
        elif op == "tab":
            lines[i] = "\t" + lines[i]
    return "\n".join(lines)


fragment_line = st.lists(
    st.one_of(
        st.sampled_from(TOKENS),
        st.sampled_from(["a", "b", "main", "x", "y", "value", "hello", "1", "2.5", "true", "~"]),
        st.text(alphabet=" \t:-[]{}!&*#'\"|>@.,=%<", max_size=4),
    ),
    max_size=8,
).map(" ".join)


# ---- properties -------------------------------------------------------------------------------


COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}


@settings(max_examples=150 * SCALE, **COMMON)
@given(st.text(max_size=300))
def test_random_text_raises_only_config_errors(text):
    run(lambda: load_config_string(text, **RENDER_VARS))


@settings(max_examples=250 * SCALE, **COMMON)
@given(st.lists(fragment_line, max_size=25).map("\n".join))
def test_random_config_fragments_raise_only_config_errors(text):
    run(lambda: load_config_string(text, **RENDER_VARS))


@settings(max_examples=300 * SCALE, **COMMON)
@given(st.sampled_from(CONFIG_NAMES), st.lists(mutation, min_size=1, max_size=6))
def test_mutated_tour_configs_raise_only_config_errors(name, mutations):
    def make():
        env = tour_env()
        env.add_template("fuzz.yaml", mutate(SOURCES[name], mutations))
        return load_config(env, "fuzz.yaml", **RENDER_VARS)

    run(make)


@settings(max_examples=100 * SCALE, **COMMON)
@given(
    st.sampled_from(CONFIG_NAMES),
    st.sampled_from([n for n in TEMPLATE_NAMES if not n.startswith("configs/")]),
    st.lists(mutation, min_size=1, max_size=6),
)
def test_mutated_parent_templates_raise_only_config_errors(name, parent, mutations):
    def make():
        env = tour_env()
        env.add_template(parent, mutate(SOURCES[parent], mutations))
        return load_config(env, name, **RENDER_VARS)

    run(make)


path_part = st.one_of(
    st.sampled_from(
        ["main", "meta", "a", "0", "-1", "--1", "arg0", "arg", "default", "layers", "x"]
    ),
    st.sampled_from(["", "null", "~", "\u00b2", "\u0661", "1e3", " ", "+", "="]),
    st.text(max_size=5),
)


override_token = st.builds(
    lambda prefix, path, value: f"{prefix}{path}" + ("" if prefix == "~" else f"={value}"),
    st.sampled_from(["", "", "+", "~"]),
    st.lists(path_part, min_size=1, max_size=4).map(".".join),
    st.one_of(st.sampled_from(TOKENS), st.text(max_size=12)),
)


@settings(max_examples=150 * SCALE, **COMMON)
@given(st.sampled_from(CONFIG_NAMES), st.lists(override_token, min_size=1, max_size=4))
def test_random_overrides_raise_only_config_errors(name, tokens):
    def make():
        config = load_config(tour_env(), name, **RENDER_VARS)
        apply_overrides(config.graph, tokens)
        return config

    run(make)


@settings(max_examples=100 * SCALE, **COMMON)
@given(st.sampled_from(CONFIG_NAMES), st.lists(st.text(max_size=20), min_size=1, max_size=4))
def test_random_command_line_tokens_raise_only_config_errors(name, tokens):
    def make():
        config = load_config(tour_env(), name, **RENDER_VARS)
        overrides = [parse_override(token) for token in tokens if is_override(token)]
        apply_overrides(config.graph, overrides)
        return config

    run(make)


@settings(max_examples=150 * SCALE, **COMMON)
@given(st.sampled_from(CONFIG_NAMES), st.lists(path_part, min_size=1, max_size=5).map(".".join))
def test_random_key_paths_raise_only_config_errors(name, path):
    config = load_config(tour_env(), name, **RENDER_VARS)
    with contextlib.suppress(ConfigError):
        config.lookup(path)


json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=6,
)
flag_name = st.sampled_from(["--a", "--b-c", "-a", "--", "-", "a", "--a b", "--a=b"])
declaration = st.fixed_dictionaries(
    {},
    optional={
        "names": st.one_of(flag_name, st.lists(flag_name, max_size=3), json_value),
        "type": st.one_of(
            st.sampled_from(["int", "float", "str", "bool", "path", "list"]), json_value
        ),
        "action": st.one_of(
            st.sampled_from(["store", "store_true", "count", "append", "version", "help"]),
            json_value,
        ),
        "choices": json_value,
        "dest": json_value,
        "help": st.one_of(st.sampled_from(["%(default)s", "%", "help"]), json_value),
        "default": json_value,
    },
)


@settings(max_examples=200 * SCALE, **COMMON)
@given(
    st.one_of(st.lists(st.one_of(declaration, json_value), max_size=4), json_value),
    st.lists(st.one_of(flag_name, st.sampled_from(["1", "x", "true", "-h", "--help"])), max_size=5),
)
def test_random_dynamic_arg_declarations_raise_only_config_errors(declarations, tokens):
    text = "dynamic_args: " + yaml.safe_dump(declarations, default_flow_style=True, width=1 << 20)

    def make():
        config = load_config_string(text)
        parse_flags(declared_args(config), tokens)
        return config

    run(make)


META_ENTRIES = [
    "searchdir: 5", "searchdir: [~]", "searchdir: {a: 1}", "searchdir: !dict {}", "searchdir: ''",
    "searchdir: [!var x]", "searchdir: ['a\\0b']", "config_prefix: ~", "config_prefix: [x]",
    "config_prefix: ../..", "default_config: 5", "default_config: ''", "system_path: 5",
    "name: !call:len [ab]", "description: [x]",
]  # fmt: skip


@pytest.fixture(scope="module")
def scratch_project():
    directory = Path(tempfile.mkdtemp(prefix="fuzz-project-"))
    shutil.copytree(TEMPLATES, directory / "templates")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@settings(max_examples=60 * SCALE, **COMMON)
@given(
    st.lists(mutation, max_size=4),
    st.lists(st.sampled_from(META_ENTRIES), max_size=2),
)
def test_mutated_meta_yaml_raises_only_config_errors(scratch_project, mutations, entries):
    text = mutate((TOUR / "meta.yaml").read_text(), mutations) + "\n" + "\n".join(entries)
    (scratch_project / "meta.yaml").write_text(text)

    def make():
        meta = MetaConfig.load(scratch_project)
        meta.name, meta.description, meta.system_path, meta.config_names(), meta.default_config
        return Project("", scratch_project, n_layers=3).config

    run(make)
