"""Parse rendered config text into the config graph, keeping the template line of every value."""

from __future__ import annotations

import re
import warnings
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode
from yaml.nodes import Node as YamlNode

from forgather.config import errors
from forgather.config.environment import Rendered
from forgather.config.nodes import (
    RESERVED_KWARGS,
    CallableNode,
    ConfigList,
    ConfigMapping,
    DListNode,
    FactoryNode,
    MetaNode,
    PartialNode,
    SingletonNode,
    VarNode,
    iter_nodes,
)
from forgather.config.origin import Origin

CALLABLE_TAGS: dict[str, type[CallableNode]] = {
    "singleton": SingletonNode,
    "call": SingletonNode,
    "factory": FactoryNode,
    "partial": PartialNode,
    "lambda": PartialNode,
    "meta": MetaNode,
}
CONTAINER_TAGS = {"dict", "list", "tuple", "dlist"}
POSITIONAL_KEY_RE = re.compile(r"^arg(\d+)$")
NAME_RE = re.compile(r"^[A-Za-z_][\w.-]*$")


class ColonlessNameWarning(UserWarning):
    """`!dict@name` was written where `!dict:@name` was meant."""


def split_tag(tag: str) -> tuple[str, str, str | None]:
    """Split `!kind:spec@name` into (kind, spec, name)."""
    body = tag[1:]
    match = re.match(r"^(\w+)(.*)$", body)
    if not match:
        return body, "", None
    kind, rest = match.group(1), match.group(2)
    name = None
    if rest.startswith(":"):
        rest = rest[1:]
    elif rest.startswith("@"):
        warnings.warn(
            f"tag {tag!r}: write '!{kind}:{rest}' (with a colon); the name is kept",
            ColonlessNameWarning,
            stacklevel=2,
        )
    elif rest:
        return kind + rest, "", None
    spec, at, maybe_name = rest.rpartition("@")
    if at and NAME_RE.match(maybe_name):
        rest, name = spec, maybe_name
    return kind, rest, name


class GraphLoader(yaml.SafeLoader):
    """A YAML loader whose tags build config-graph nodes and whose containers remember origins."""

    def __init__(self, stream: str, rendered: Rendered | None = None, source: str = "<config>"):
        super().__init__(stream)
        self.rendered = rendered
        self.source = source

    # ---- origins --------------------------------------------------------------------------
    def origin(self, node: YamlNode) -> Origin | None:
        line = node.start_mark.line + 1 if node.start_mark else 0
        if self.rendered is not None:
            found = self.rendered.origin(line)
            if found is not None:
                return found
        return Origin(self.source, line, kind="string" if self.rendered is None else "template")

    def fail(self, cls: type[errors.ConfigError], message: str, node: YamlNode):
        raise cls(message, self.origin(node))

    # ---- plain containers ------------------------------------------------------------------
    def build_mapping(self, node: MappingNode) -> ConfigMapping:
        self.flatten_mapping(node)
        mapping = ConfigMapping()
        mapping.origin = self.origin(node)
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                self.fail(errors.GraphError, f"unhashable mapping key {key!r}", key_node)
            value = self.construct_object(value_node, deep=True)
            mapping.set(key, value, self.origin(key_node))
        return mapping

    def build_sequence(self, node: SequenceNode) -> ConfigList:
        items = ConfigList()
        items.origin = self.origin(node)
        for child in node.value:
            items.append(self.construct_object(child, deep=True))
            items.origins.append(self.origin(child))
        return items

    def construct_config_map(self, node: MappingNode) -> ConfigMapping:
        return self.build_mapping(node)

    def construct_config_seq(self, node: SequenceNode) -> ConfigList:
        return self.build_sequence(node)

    # ---- tags ------------------------------------------------------------------------------
    def scalar_value(self, node: ScalarNode) -> Any:
        """A tagged scalar's value as YAML would type it without the tag."""
        if node.style in ("'", '"', "|", ">"):
            return node.value
        implicit = self.resolve(ScalarNode, node.value, (True, False))
        return self.construct_object(
            ScalarNode(implicit, node.value, node.start_mark, node.end_mark)
        )

    def construct_tag(self, suffix: str, node: YamlNode) -> Any:
        kind, spec, name = split_tag("!" + suffix)
        if kind == "var":
            return self.construct_var(node)
        if kind in CONTAINER_TAGS:
            if spec:
                self.fail(
                    errors.UnknownTagError, f"!{kind} takes no import spec (got {spec!r})", node
                )
            return self.construct_container(kind, name, node)
        cls = CALLABLE_TAGS.get(kind)
        if cls is None:
            known = ", ".join(f"!{t}" for t in [*CALLABLE_TAGS, *sorted(CONTAINER_TAGS), "var"])
            self.fail(errors.UnknownTagError, f"!{suffix} (known tags: {known})", node)
        if not spec:
            self.fail(
                errors.ImportSpecError,
                f"!{kind} needs an import spec, e.g. !{kind}:module:Name",
                node,
            )
        args, kwargs, reserved = self.call_arguments(node)
        built = cls(
            spec,
            args,
            kwargs,
            name=name,
            origin=self.origin(node),
            submodule_searchpath=reserved.get("submodule_searchpath"),
            latent_args=reserved.get("latent_args"),
        )
        built.written_tag = kind
        return built

    def call_arguments(self, node: YamlNode) -> tuple[ConfigList, ConfigMapping, dict[str, Any]]:
        args, kwargs, reserved = ConfigList(), ConfigMapping(), {}
        args.origin = kwargs.origin = self.origin(node)
        if isinstance(node, ScalarNode):
            if node.value == "" and node.style is None:
                return args, kwargs, reserved
            args.append(self.scalar_value(node))
            args.origins.append(self.origin(node))
        elif isinstance(node, SequenceNode):
            args = self.build_sequence(node)
        else:
            mapping = self.build_mapping(node)
            keys = set(mapping)
            if keys and keys <= {"args", "kwargs"}:
                explicit_args = mapping.get("args", ConfigList())
                explicit_kwargs = mapping.get("kwargs", ConfigMapping())
                if not isinstance(explicit_args, list) or not isinstance(explicit_kwargs, dict):
                    self.fail(
                        errors.GraphError, "'args' must be a list and 'kwargs' a mapping", node
                    )
                args = (
                    explicit_args
                    if isinstance(explicit_args, ConfigList)
                    else ConfigList(explicit_args)
                )
                if not isinstance(explicit_kwargs, ConfigMapping):
                    explicit_kwargs = ConfigMapping(explicit_kwargs)
                mapping = explicit_kwargs
            positional: list[tuple[int, Any, Origin | None]] = []
            for key, value in mapping.items():
                origin = mapping.provenance.get(key)
                origin = origin.origin if origin else None
                if key in RESERVED_KWARGS:
                    reserved[key] = value
                    continue
                match = POSITIONAL_KEY_RE.match(key) if isinstance(key, str) else None
                if match:
                    positional.append((int(match.group(1)), value, origin))
                    continue
                kwargs[key] = value
                kwargs.provenance[key] = mapping.provenance[key]
            for _, value, origin in sorted(positional, key=lambda item: item[0]):
                args.append(value)
                args.origins.append(origin)
        return args, kwargs, reserved

    def construct_var(self, node: YamlNode) -> VarNode:
        if isinstance(node, ScalarNode):
            name = node.value.strip()
            if not name:
                self.fail(errors.GraphError, "!var needs a name: `!var NAME`", node)
            return VarNode(name, origin=self.origin(node))
        if isinstance(node, MappingNode):
            mapping = self.build_mapping(node)
            unknown = set(mapping) - {"name", "default"}
            if "name" not in mapping or unknown:
                self.fail(errors.GraphError, "!var takes {name: NAME, default: VALUE}", node)
            return VarNode(
                str(mapping["name"]),
                mapping.get("default"),
                "default" in mapping,
                origin=self.origin(node),
            )
        self.fail(errors.GraphError, "!var takes a name or {name: NAME, default: VALUE}", node)

    def construct_container(self, kind: str, name: str | None, node: YamlNode) -> SingletonNode:
        origin = self.origin(node)
        empty = isinstance(node, ScalarNode) and node.value == "" and node.style is None
        if kind in ("dict", "dlist"):
            if empty:
                mapping = ConfigMapping()
            elif isinstance(node, MappingNode):
                mapping = self.build_mapping(node)
            else:
                self.fail(errors.GraphError, f"!{kind} takes a mapping", node)
            if kind == "dlist":
                return DListNode(mapping, name=name, origin=origin)
            return SingletonNode("named_dict", ConfigList(), mapping, name=name, origin=origin)
        if empty:
            items = ConfigList()
        elif isinstance(node, SequenceNode):
            items = self.build_sequence(node)
        else:
            self.fail(errors.GraphError, f"!{kind} takes a sequence", node)
        spec = "named_list" if kind == "list" else "named_tuple"
        return SingletonNode(spec, items, ConfigMapping(), name=name, origin=origin)


GraphLoader.add_constructor("tag:yaml.org,2002:map", GraphLoader.construct_config_map)
GraphLoader.add_constructor("tag:yaml.org,2002:seq", GraphLoader.construct_config_seq)
GraphLoader.add_multi_constructor(
    "!", lambda loader, suffix, node: loader.construct_tag(suffix, node)
)
# Dates stay strings: a config never means a datetime by accident.
GraphLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class CoreSchemaLoader(GraphLoader):
    """A GraphLoader that reads plain scalars by YAML 1.2's core schema, the way command lines are
    typed: only true/false are booleans and null/~ null (`no`, `on`, `off`, `yes` stay strings),
    `1e-3` is a float, `010` is ten. Used for `key=value` overrides, not for config files."""


def _core_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    value = loader.construct_scalar(node)
    return int(value, 0) if value[:2] in ("0o", "0x") else int(value, 10)


CoreSchemaLoader.yaml_implicit_resolvers = {}
for _tag, _pattern, _first in (
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        "float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+.0123456789",
    ),
    ("merge", r"^(?:<<)$", "<"),
):
    CoreSchemaLoader.add_implicit_resolver(
        f"tag:yaml.org,2002:{_tag}", re.compile(_pattern), list(_first)
    )
CoreSchemaLoader.add_constructor("tag:yaml.org,2002:int", _core_int)


def _never_closed(error: yaml.MarkedYAMLError) -> bool:
    """Whether the error is a quoted scalar or flow collection that is never closed."""
    context = error.context or ""
    return error.context_mark is not None and (
        "end of stream" in (error.problem or "")
        or context.startswith(("while scanning a quoted scalar", "while parsing a flow"))
    )


def _line(line: int, rendered: Rendered | None) -> int:
    """A rendered text's line as the template file's line (as is without a source map)."""
    origin = rendered.origin(line) if rendered else None
    return origin.line if origin is not None and origin.line else line


def parse_graph(
    text: str,
    rendered: Rendered | None = None,
    source: str = "<config>",
    loader_class: type[GraphLoader] = GraphLoader,
) -> Any:
    """Parse YAML text into a config graph; errors name the template file and line.
    `loader_class`: CoreSchemaLoader for text typed on a command line."""
    try:
        loader = loader_class(text, rendered, source)  # the reader checks every character here
    except yaml.reader.ReaderError as error:
        line = text.count("\n", 0, max(error.position, 0)) + 1
        origin = rendered.origin(line) if rendered else Origin(source, line)
        char = error.character
        char = f"#x{char:04x}" if isinstance(char, int) else repr(char)
        raise errors.YamlSyntaxError(
            f"unacceptable character {char}: special characters are not allowed", origin
        ) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", ColonlessNameWarning)
            graph = loader.get_single_data()
    except errors.ConfigError:
        raise
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        message = " ".join(part for part in (error.context, error.problem) if part)
        if _never_closed(error) and error.context_mark.line != mark.line:
            # a quote or bracket left open: the mistake is where it opens, not where YAML gave up
            message += f" (noticed at line {_line(mark.line + 1, rendered)})"
            mark = error.context_mark
        origin = None
        if mark is not None:
            origin = rendered.origin(mark.line + 1) if rendered else Origin(source, mark.line + 1)
        cls = (
            errors.UnknownTagError
            if "could not determine a constructor" in message
            else errors.YamlSyntaxError
        )
        raise cls(message or str(error), origin) from None
    except yaml.YAMLError as error:
        raise errors.YamlSyntaxError(str(error)) from None
    except RecursionError:
        raise errors.GraphError("the config nests too deeply") from None
    finally:
        loader.dispose()
    check_names(graph)
    return graph


def check_names(graph: Any) -> None:
    """Two different nodes may not share an explicit `@name`."""
    named: dict[str, CallableNode] = {}
    for node in iter_nodes(graph):
        if isinstance(node, CallableNode) and node.name:
            other = named.setdefault(node.name, node)
            if other is not node:
                raise errors.DuplicateNameError(
                    f"@{node.name} is also used at {other.origin}; give each node its own name",
                    node.origin,
                )
