"""Write a config graph (or part of one) back out as YAML in the config language.

`parse_graph(to_yaml(graph))` builds the same objects as `graph`: tags are re-emitted (`!singleton:spec@name`,
`!factory:spec`, `!partial:spec`, `!meta:spec`, `!var`, `!dict`, `!list`, `!tuple`, `!dlist`), and a node
or container referenced more than once is written once with an anchor (`&name` for named nodes) and then
as aliases (`*name`), so sharing survives. Provenance (template lines) is not part of the output.

`to_flow(value)` writes the same thing on one line (flow style), for tables and messages.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode
from yaml.nodes import Node as YamlNode

from forgather.config.nodes import (
    CallableNode,
    DListNode,
    FactoryNode,
    MetaNode,
    PartialNode,
    SingletonNode,
    VarNode,
)

POSITIONAL_KEY_RE = re.compile(r"^arg(\d+)$")
ANCHOR_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_-]")

# Strings a YAML 1.2 (or 1.1) reader could take for a number, bool or null: always quoted, even where
# PyYAML's own resolver would read them back as strings (e.g. `1e3`), so the text means one thing to
# every reader.
AMBIGUOUS_STR_RE = re.compile(
    r"""^(?:
        [-+]?[0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?   # 1, 1.5, 1e3, 1_000
      | [-+]?\.[0-9]+(?:[eE][-+]?[0-9]+)?                      # .5
      | 0o[0-7]+ | 0x[0-9a-fA-F]+ | 0b[01]+
      | [-+]?\.(?:inf|Inf|INF) | \.(?:nan|NaN|NAN)
      | (?:true|True|TRUE|false|False|FALSE|null|Null|NULL|~)
      | (?:yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF)
    )$""",
    re.VERBOSE,
)

UNSAFE_LINE_BREAKS = "\r\x85\u2028\u2029\ufeff"

CONTAINER_TAG_FOR_SPEC = {"named_dict": "dict", "named_list": "list", "named_tuple": "tuple"}


def _callable_kind(node: CallableNode) -> str:
    if isinstance(node, MetaNode):
        return "meta"
    if isinstance(node, PartialNode):
        return "partial"
    if isinstance(node, FactoryNode):
        return "factory"
    return "singleton"


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | bytes | bool | int | float)


class GraphRepresenter(yaml.representer.SafeRepresenter):
    """Represents graph nodes and containers as tagged YAML nodes."""

    flow = False  # True: everything in flow style (one line)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.anchor_names: dict[YamlNode, str] = {}

    def ignore_aliases(self, data: Any) -> bool:
        # Tuples are immutable (and CPython shares `()`): anchoring them would only add noise.
        return _is_scalar(data) or type(data) is tuple

    # ---- scalars -------------------------------------------------------------------------------
    def represent_str(self, data: str) -> ScalarNode:
        style = None
        if any(ch in data for ch in UNSAFE_LINE_BREAKS):
            style = '"'  # PyYAML's other styles would turn these into plain line breaks
        elif "\n" in data:
            style = '"' if self.flow else "|"
        elif AMBIGUOUS_STR_RE.match(data):
            style = "'"
        return self.represent_scalar("tag:yaml.org,2002:str", data, style=style)

    def represent_other(self, data: Any) -> ScalarNode:
        """Objects YAML cannot write (e.g. values given at build time): their repr, as a string."""
        return self.represent_str(repr(data))

    # ---- containers ----------------------------------------------------------------------------
    def _sequence(self, tag: str, items: Any) -> SequenceNode:
        items = list(items)
        flow = self.flow or (bool(items) and len(items) <= 8 and all(map(_is_short_scalar, items)))
        return self.represent_sequence(tag, items, flow_style=flow)

    def _mapping(self, tag: str, mapping: Any, flow: bool = False) -> MappingNode:
        return self.represent_mapping(tag, mapping, flow_style=self.flow or flow)

    def represent_dict_like(self, data: dict) -> MappingNode:
        return self._mapping("tag:yaml.org,2002:map", data)

    def represent_list_like(self, data: list) -> SequenceNode:
        return self._sequence("tag:yaml.org,2002:seq", data)

    def represent_tuple(self, data: tuple) -> SequenceNode:
        return self._sequence("!tuple", data)

    # ---- graph nodes ---------------------------------------------------------------------------
    def represent_var(self, node: VarNode) -> YamlNode:
        if not node.has_default:
            return self.represent_scalar("!var", str(node.name))
        return self._mapping(
            "!var", {"name": node.name, "default": node.default}, flow=_is_scalar(node.default)
        )

    def represent_callable(self, node: CallableNode) -> YamlNode:
        name = f"@{node.name}" if node.name else ""
        reserved = {
            key: value
            for key, value in (
                ("submodule_searchpath", node.submodule_searchpath),
                ("latent_args", node.latent_args),
            )
            if value is not None
        }
        args, kwargs = list(node.args), dict(node.kwargs)
        if isinstance(node, DListNode):
            result = self._mapping("!dlist" + (f":{name}" if name else ""), kwargs)
        elif type(node) is SingletonNode and node.spec in CONTAINER_TAG_FOR_SPEC and not reserved:
            kind = CONTAINER_TAG_FOR_SPEC[node.spec]
            tag = f"!{kind}" + (f":{name}" if name else "")
            if kind == "dict" and not args:
                result = self._mapping(tag, kwargs)
            elif kind != "dict" and not kwargs:
                result = self._sequence(tag, args)
            else:
                result = self._call(f"!singleton:{node.spec}{name}", args, kwargs, reserved)
        else:
            tag = f"!{_callable_kind(node)}:{node.spec}{name}"
            result = self._call(tag, args, kwargs, reserved)
        if node.name:
            self.anchor_names[result] = node.name
        return result

    def _call(
        self, tag: str, args: list[Any], kwargs: dict[Any, Any], reserved: dict[str, Any]
    ) -> YamlNode:
        if not kwargs and not reserved:
            return self._sequence(tag, args)
        if set(kwargs) <= {"args", "kwargs"} and not any(
            POSITIONAL_KEY_RE.match(key) for key in kwargs if isinstance(key, str)
        ):
            # `{args: ..., kwargs: ...}` alone would be read as the explicit form: use it.
            return self._mapping(tag, {"args": args, "kwargs": {**kwargs, **reserved}})
        mapping: dict[Any, Any] = {f"arg{index}": arg for index, arg in enumerate(args)}
        mapping.update(kwargs)
        mapping.update(reserved)
        return self._mapping(tag, mapping)


def _is_short_scalar(value: Any) -> bool:
    if isinstance(value, str):
        return "\n" not in value and len(value) <= 40
    return _is_scalar(value)


GraphRepresenter.add_representer(str, GraphRepresenter.represent_str)
GraphRepresenter.add_representer(dict, GraphRepresenter.represent_dict_like)
GraphRepresenter.add_representer(list, GraphRepresenter.represent_list_like)
GraphRepresenter.add_representer(tuple, GraphRepresenter.represent_tuple)
GraphRepresenter.add_multi_representer(str, GraphRepresenter.represent_str)
GraphRepresenter.add_multi_representer(dict, GraphRepresenter.represent_dict_like)
GraphRepresenter.add_multi_representer(list, GraphRepresenter.represent_list_like)
GraphRepresenter.add_multi_representer(tuple, GraphRepresenter.represent_tuple)
GraphRepresenter.add_multi_representer(VarNode, GraphRepresenter.represent_var)
GraphRepresenter.add_multi_representer(CallableNode, GraphRepresenter.represent_callable)
GraphRepresenter.add_representer(None, GraphRepresenter.represent_other)


class GraphDumper(
    yaml.emitter.Emitter,
    yaml.serializer.Serializer,
    GraphRepresenter,
    yaml.resolver.Resolver,
):
    """Emits graphs: block style with indented sequences, anchors named after the nodes' `@name`s."""

    def __init__(self, stream: Any, flow: bool = False, **kwargs: Any):
        yaml.emitter.Emitter.__init__(
            self, stream, indent=2, width=4096, allow_unicode=True, line_break="\n"
        )
        yaml.serializer.Serializer.__init__(self)
        GraphRepresenter.__init__(self, default_flow_style=flow, sort_keys=False)
        yaml.resolver.Resolver.__init__(self)
        self.flow = flow
        self.used_anchors: set[str] = set()
        self.anchor_count = 0

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)

    def choose_scalar_style(self) -> str:
        # A tagged scalar (`!var name`) may stay plain: the stock emitter would quote it.
        event = self.event
        if self.analysis is None:
            self.analysis = self.analyze_scalar(event.value)
        tag = event.tag or ""
        if (
            not event.style
            and tag.startswith("!")
            and not tag.startswith("!!")
            and event.value
            and not self.analysis.multiline
            and (
                self.analysis.allow_flow_plain
                if self.flow_level
                else self.analysis.allow_block_plain
            )
        ):
            return ""
        return super().choose_scalar_style()

    def generate_anchor(self, node: YamlNode) -> str:
        reserved = {ANCHOR_UNSAFE_RE.sub("_", name) for name in self.anchor_names.values()}
        preferred = self.anchor_names.get(node)
        if preferred is not None:
            anchor = ANCHOR_UNSAFE_RE.sub("_", preferred) or "node"
            candidate, count = anchor, 1
            while candidate in self.used_anchors:
                count += 1
                candidate = f"{anchor}_{count}"
        else:
            while True:
                self.anchor_count += 1
                candidate = f"id{self.anchor_count:03d}"
                if candidate not in self.used_anchors and candidate not in reserved:
                    break
        self.used_anchors.add(candidate)
        return candidate


def _dump(value: Any, flow: bool) -> str:
    stream_parts: list[str] = []

    class _Stream:
        def write(self, text: str) -> None:
            stream_parts.append(text)

    dumper = GraphDumper(_Stream(), flow=flow)
    try:
        dumper.open()
        dumper.represent(value)
        dumper.close()
    finally:
        dumper.dispose()
    text = "".join(stream_parts)
    if text.endswith("\n...\n"):
        text = text[: -len("...\n")]
    return text


def to_yaml(value: Any) -> str:
    """`value` (a graph or part of one) as block-style YAML in the config language."""
    return _dump(value, flow=False)


def to_flow(value: Any) -> str:
    """`value` as one line of flow-style YAML (e.g. `!singleton:torch.nn:Linear [4, 8]`)."""
    return _dump(value, flow=True).strip()


__all__ = ["to_flow", "to_yaml"]
