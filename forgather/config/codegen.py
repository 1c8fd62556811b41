"""Generate a standalone Python module that builds what a config graph describes.

`generate_code(value)` turns one target of a config graph into the source of a module that defines
`def construct(<vars>)`; calling it builds objects equal to those `Builder` builds:

* `!var` names become parameters (required ones first, then those with defaults, each group sorted);
* singletons used more than once (or named, under the default policy) are assigned to one variable;
  named or shared factories become `name = partial(...)` and every use calls `name()`;
  partials become `functools.partial` objects; everything else is written inline;
* specs become imports (`pkg.mod:Sym` -> `from pkg.mod import Sym`), relative imports (`.mod:Sym`), a small
  loader helper for `/abs/file.py:Sym`, or bare builtins; clashing names get aliases;
* the config built-ins are written as Python syntax: `obj.attr`, `obj[key]`, `fn(*args)`, dict, list and
  tuple literals.

The module is built as an `ast` tree, unparsed and formatted with black (when black is importable).

Differences from `Builder`, accepted to keep the code plain: a partial (or a shared factory) builds
its arguments once, when it is created, where `Builder` builds them again at every call; a parameter whose
default is a graph uses `None` to mean "not given".
"""

from __future__ import annotations

import ast
import builtins
import inspect
import keyword
import math
import os
import re
import textwrap
from dataclasses import dataclass
from typing import Any

from forgather.config.errors import CodegenError
from forgather.config.nodes import (
    CallableNode,
    DListNode,
    FactoryNode,
    MetaNode,
    PartialNode,
    SingletonNode,
    VarNode,
)
from forgather.config.specs import CONFIG_BUILTINS, SPEC_RE, is_file_spec

__all__ = ["NAME_POLICIES", "generate_code"]

NAME_POLICIES = ("named", "required", "all")
GREEK = (
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu",
    "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega",
)  # fmt: skip
MAIN = None  # the scope of the function body itself; other scopes are `!var` names (their default blocks)


# Helpers written into the generated module when it needs them. Fixed text, never mixed with config data.
def _file_loader_source() -> str:
    """`_load_symbol(path, symbol, searchpath)` for generated modules: forgather's own file loader
    (specs.file_module_name and specs.load_file_module, nested, annotations dropped, the standard
    modules they use imported inside), so generated code loads a file exactly as a build does."""
    from forgather.config import specs

    outer = ast.parse(
        "def _load_symbol(path, symbol, searchpath):\n"
        "    import hashlib\n    import importlib.machinery\n    import importlib.util\n"
        "    import os\n    import re\n    import sys\n"
        "    return getattr(load_file_module(path, searchpath), symbol)\n"
    ).body[0]
    assert isinstance(outer, ast.FunctionDef)
    nested = []
    for function in (specs.file_module_name, specs.load_file_module):
        (definition,) = ast.parse(textwrap.dedent(inspect.getsource(function))).body
        assert isinstance(definition, ast.FunctionDef)
        definition.returns = None
        if isinstance(definition.body[0], ast.Expr) and isinstance(
            getattr(definition.body[0], "value", None), ast.Constant
        ):
            definition.body = definition.body[1:]  # the docstring
        for argument in ast.walk(definition.args):
            if isinstance(argument, ast.arg):
                argument.annotation = None
        nested.append(definition)
    outer.body[-1:-1] = nested
    return ast.unparse(outer) + "\n"


LOAD_SYMBOL_SOURCE = _file_loader_source()
HELPER_SOURCES = {
    "_load_symbol": LOAD_SYMBOL_SOURCE,
    "_call": "def _call(function, *args, **kwargs):\n    return function(*args, **kwargs)\n",
    "_keys": "def _keys(mapping):\n    return list(mapping.keys())\n",
    "_values": "def _values(mapping):\n    return list(mapping.values())\n",
    "_items": "def _items(mapping):\n    return list(mapping.items())\n",
    "_named_list": "def _named_list(*args):\n    return list(args)\n",
    "_named_tuple": "def _named_tuple(*args):\n    return tuple(args)\n",
}


def generate_code(
    value: Any,
    *,
    function_name: str = "construct",
    name_policy: str = "named",
    relaxed_kwargs: bool = False,
    source: str | None = None,
) -> str:
    """The source of a module whose `function_name(<vars>)` builds what `value` (a graph) describes.

    `name_policy` picks which nodes get a variable of their own: "named" (shared or `@named` ones),
    "required" (only shared ones) or "all" (every call). `relaxed_kwargs` adds `**kwargs` so that
    unused variables may be passed. `source` is named in the module's docstring.
    Raises `CodegenError` for graphs that cannot be written as code (e.g. `!meta` nodes).
    """
    if name_policy not in NAME_POLICIES:
        raise ValueError(
            f"name_policy must be one of {', '.join(NAME_POLICIES)}, not {name_policy!r}"
        )
    if not function_name.isidentifier() or keyword.iskeyword(function_name):
        raise ValueError(f"function_name {function_name!r} is not a Python identifier")
    try:
        module = _Generator(value, function_name, name_policy, relaxed_kwargs, source).module()
    except RecursionError:
        raise CodegenError("the config nests too deeply to generate code for it") from None
    text = ast.unparse(module) + "\n"
    try:
        import black
    except ImportError:  # black is a dependency, but the text is valid without it
        return text
    return black.format_str(text, mode=black.Mode())


# ---- names ----------------------------------------------------------------------------------------


@dataclass
class _Symbol:
    """A name in the generated module, chosen only once the whole module is known."""

    kind: str  # "local" | "import" | "file" | "helper" | "builtin" | "builtins"
    preferred: str
    placeholder: str
    explicit: bool = False  # a local with an `@name`
    module: str | None = None  # imports: the module (None for `from . import x`)
    level: int = 0  # imports: leading dots
    path: str | None = None  # files
    searchpath: tuple[str, ...] = ()  # files
    name: str | None = None
    via_module: bool = False  # builtins shadowed by a parameter: written `builtins.name`

    def sort_key(self) -> tuple[Any, ...]:
        order = ("builtins", "import", "file", "helper")
        return (
            order.index(self.kind),
            self.level,
            self.module or "",
            self.path or "",
            self.preferred,
        )


def _identifier(text: str) -> str:
    name = re.sub(r"\W", "_", text)
    if not name or name[0].isdigit():
        name = "_" + name
    if keyword.iskeyword(name):
        name += "_"
    return name


def _unique(preferred: str, taken: set[str]) -> str:
    name, index = preferred, 0
    while name in taken:
        index += 1
        name = f"{preferred}_{index}"
    taken.add(name)
    return name


def _is_name(text: Any) -> bool:
    return isinstance(text, str) and text.isidentifier() and not keyword.iskeyword(text)


def _describe(node: CallableNode) -> str:
    return f"!{node.tag}:{node.spec}" + (f"@{node.name}" if node.name else "")


def _contains_nodes(value: Any) -> bool:
    if isinstance(value, VarNode | CallableNode):
        return True
    if isinstance(value, dict):
        return any(_contains_nodes(k) or _contains_nodes(v) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return any(_contains_nodes(item) for item in value)
    return False


def _is_immutable_literal(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return True
    if isinstance(value, tuple):
        return all(_is_immutable_literal(item) for item in value)
    return False


def _literal_kind(value: Any) -> type:
    """ConfigMapping and dict (ConfigList and list) are the same kind of literal."""
    if isinstance(value, dict):
        return dict
    if isinstance(value, list):
        return list
    return type(value)


def _same_literal(a: Any, b: Any) -> bool:
    if _literal_kind(a) is not _literal_kind(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same_literal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same_literal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@dataclass
class _Param:
    """One `!var` name: "required", "literal" (default in the signature) or "fill" (built in the body)."""

    name: str
    kind: str
    default: Any = None


# ---- the generator --------------------------------------------------------------------------------


class _Generator:
    def __init__(
        self, root: Any, function_name: str, policy: str, relaxed: bool, source: str | None
    ):
        self.root = root
        self.function_name = function_name
        self.policy = policy
        self.relaxed = relaxed
        self.source = source
        self.symbols: dict[tuple[Any, ...], _Symbol] = {}
        self.var_nodes: dict[str, list[VarNode]] = {}
        self.params: dict[str, _Param] = {}
        self.counts: dict[int, int] = {}
        self.scopes: dict[Any, set[str | None]] = {}  # id(node) or ("var", name)
        self.defined: dict[int, _Symbol] = {}
        self.filled: set[str] = set()
        self.in_progress: set[Any] = set()
        self.bodies: dict[str | None, list[ast.stmt]] = {MAIN: []}

    # ---- analysis ------------------------------------------------------------------------------

    def analyse(self) -> None:
        self.collect(self.root, set(), set())
        for name in sorted(self.var_nodes):
            self.params[name] = self.param(name, self.var_nodes[name])
        fills = [p for p in sorted(self.params) if self.params[p].kind == "fill"]
        self.count(self.root)
        for name in fills:
            self.count(self.params[name].default)
        self.reach(self.root, MAIN, set())
        for name in fills:
            self.reach(self.params[name].default, name, set())

    def collect(self, value: Any, done: set[int], stack: set[int]) -> None:
        """Find every `!var`, refuse `!meta` nodes, node keys and cycles."""
        if not isinstance(value, VarNode | CallableNode | dict | list | tuple):
            return
        key = id(value)
        if key in stack:
            where = getattr(value, "origin", None)
            raise CodegenError("the config refers to itself (a cycle of anchors)", where)
        if key in done:
            return
        stack.add(key)
        if isinstance(value, VarNode):
            if not _is_name(value.name):
                raise CodegenError(
                    f"!var {value.name!r} is not a valid Python parameter name", value.origin
                )
            nodes = self.var_nodes.setdefault(value.name, [])
            if not any(node is value for node in nodes):
                nodes.append(value)
            children = [value.default] if value.has_default else []
        elif isinstance(value, MetaNode):
            raise CodegenError(
                f"{_describe(value)} is a !meta node, which is called with unbuilt graph nodes and "
                "cannot be written as code",
                value.origin,
            )
        elif isinstance(value, CallableNode):
            children = list(value.children())
        elif isinstance(value, dict):
            for item in value:
                if _contains_nodes(item):
                    raise CodegenError(
                        f"a mapping key holds a graph node: {item!r}", _origin(value)
                    )
            children = list(value.values())
        else:
            children = list(value)
        for child in children:
            self.collect(child, done, stack)
        stack.discard(key)
        done.add(key)

    def param(self, name: str, nodes: list[VarNode]) -> _Param:
        if not all(node.has_default for node in nodes):
            return _Param(name, "required")
        first = nodes[0]
        for other in nodes[1:]:
            same = other.default is first.default or (
                not _contains_nodes(first.default)
                and not _contains_nodes(other.default)
                and _same_literal(first.default, other.default)
            )
            if not same:
                raise CodegenError(
                    f"!var {name} has different defaults here and at {first.origin}; "
                    "generated code can only give it one",
                    other.origin,
                )
        if _is_immutable_literal(first.default):
            return _Param(name, "literal", first.default)
        return _Param(name, "fill", first.default)

    def count(self, value: Any) -> None:
        """Count the places each node's value is used; a plain container counts again at every use."""
        if isinstance(value, CallableNode):
            key = id(value)
            self.counts[key] = self.counts.get(key, 0) + 1
            if self.counts[key] == 1:
                for child in value.children():
                    self.count(child)
        elif isinstance(value, dict):
            for item in value.values():
                self.count(item)
        elif isinstance(value, list | tuple):
            for item in value:
                self.count(item)

    def reach(self, value: Any, scope: str | None, seen: set[int]) -> None:
        """Record that `scope` (the body or one var's default block) reaches each node and var."""
        if isinstance(value, VarNode):
            self.scopes.setdefault(("var", value.name), set()).add(scope)
            return
        if isinstance(value, CallableNode):
            if id(value) in seen:
                return
            seen.add(id(value))
            self.scopes.setdefault(id(value), set()).add(scope)
            children: Any = value.children()
        elif isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list | tuple):
            children = value
        else:
            return
        for child in children:
            self.reach(child, scope, seen)

    def hoisted(self, node: CallableNode) -> bool:
        if self.counts.get(id(node), 0) > 1 or self.policy == "all":
            return True
        return self.policy == "named" and bool(node.name)

    def scope_of(self, key: Any) -> str | None:
        """Where a definition goes: the default block of the one var whose default alone uses it,
        else the function body."""
        scopes = self.scopes.get(key, {MAIN})
        if len(scopes) == 1:
            return next(iter(scopes))
        return MAIN

    # ---- symbols -------------------------------------------------------------------------------

    def symbol(self, key: tuple[Any, ...], kind: str, preferred: str, **info: Any) -> _Symbol:
        sym = self.symbols.get(key)
        if sym is None:
            sym = _Symbol(kind, preferred, f"\0{len(self.symbols)}", **info)
            self.symbols[key] = sym
        return sym

    def ref(self, sym: _Symbol, store: bool = False) -> ast.Name:
        return ast.Name(id=sym.placeholder, ctx=ast.Store() if store else ast.Load())

    def builtin(self, name: str) -> ast.Name:
        return self.ref(self.symbol(("builtin", name), "builtin", name))

    def imported(self, module: str | None, level: int, name: str) -> ast.Name:
        key = ("import", level, module, name)
        return self.ref(self.symbol(key, "import", name, module=module, level=level))

    def helper(self, name: str) -> ast.Name:
        return self.ref(self.symbol(("helper", name), "helper", name))

    def partial(self) -> ast.Name:
        return self.imported("functools", 0, "partial")

    # ---- expressions ---------------------------------------------------------------------------

    def expr(self, value: Any) -> ast.expr:
        if isinstance(value, VarNode):
            return self.var(value)
        if isinstance(value, CallableNode):
            if self.hoisted(value):
                name = self.ref(self.define(value))
                if isinstance(value, FactoryNode):
                    return ast.Call(func=name, args=[], keywords=[])
                return name
            if isinstance(value, PartialNode):
                return self.partial_expr(value)
            return self.call_expr(value)
        if isinstance(value, dict):
            keys: list[ast.expr | None] = [self.expr(key) for key in value]
            return ast.Dict(keys=keys, values=[self.expr(item) for item in value.values()])
        if isinstance(value, list):
            return ast.List(elts=[self.expr(item) for item in value], ctx=ast.Load())
        if isinstance(value, tuple):
            return ast.Tuple(elts=[self.expr(item) for item in value], ctx=ast.Load())
        return self.literal(value)

    def literal(self, value: Any) -> ast.expr:
        if value is None or isinstance(value, bool | str | bytes):
            return ast.Constant(value)
        if isinstance(value, int):
            if value < 0:
                return ast.UnaryOp(op=ast.USub(), operand=ast.Constant(-value))
            return ast.Constant(value)
        if isinstance(value, float):
            if math.isnan(value) or math.isinf(value):
                text = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
                return ast.Call(func=self.builtin("float"), args=[ast.Constant(text)], keywords=[])
            if math.copysign(1.0, value) < 0:
                return ast.UnaryOp(op=ast.USub(), operand=ast.Constant(-value))
            return ast.Constant(value)
        if isinstance(value, set | frozenset):
            items = sorted(value, key=lambda item: (type(item).__name__, repr(item)))
            elts = [self.literal(item) for item in items]
            as_set = ast.Set(elts=elts) if elts else ast.Call(self.builtin("set"), [], [])
            if isinstance(value, frozenset):
                return ast.Call(
                    func=self.builtin("frozenset"), args=[as_set] if elts else [], keywords=[]
                )
            return as_set
        if isinstance(value, tuple):
            return ast.Tuple(elts=[self.literal(item) for item in value], ctx=ast.Load())
        raise CodegenError(f"cannot write a {type(value).__name__} value as code: {value!r}")

    def var(self, node: VarNode) -> ast.expr:
        param = self.params[node.name]
        if param.kind == "fill" and node.name not in self.filled:
            if node.name in self.in_progress:
                raise CodegenError(f"the default of !var {node.name} refers to itself", node.origin)
            self.in_progress.add(node.name)
            self.bodies[node.name] = body = []
            default = self.expr(param.default)
            del self.bodies[node.name]
            self.in_progress.discard(node.name)
            self.filled.add(node.name)
            target = ast.Name(id=node.name, ctx=ast.Store())
            test = ast.Compare(
                left=ast.Name(id=node.name, ctx=ast.Load()),
                ops=[ast.Is()],
                comparators=[ast.Constant(None)],
            )
            body.append(ast.Assign(targets=[target], value=default))
            self.bodies[self.scope_of(("var", node.name))].append(
                ast.If(test=test, body=body, orelse=[])
            )
        return ast.Name(id=node.name, ctx=ast.Load())

    def define(self, node: CallableNode) -> _Symbol:
        """Assign the node's value (or, for factories, a partial) to a variable, once."""
        key = id(node)
        if key in self.defined:
            return self.defined[key]
        if key in self.in_progress:
            raise CodegenError(f"{_describe(node)} refers to itself", node.origin)
        self.in_progress.add(key)
        if isinstance(node, FactoryNode | PartialNode):
            value = self.partial_expr(node)
        else:
            value = self.call_expr(node)
        self.in_progress.discard(key)
        if node.name:
            sym = self.symbol(("local", key), "local", _identifier(node.name), explicit=True)
        else:
            sym = self.symbol(("local", key), "local", "")
        self.defined[key] = sym
        body = self.bodies.get(self.scope_of(id(node)))
        if body is None:  # pragma: no cover - a node's scope is always open when it is first used
            raise CodegenError(
                f"{_describe(node)}: internal error placing its definition", node.origin
            )
        body.append(ast.Assign(targets=[self.ref(sym, store=True)], value=value))
        return sym

    def arguments(
        self, node: CallableNode, args: list[Any] | None = None
    ) -> tuple[list[ast.expr], list[ast.keyword]]:
        """Positional and keyword arguments, built in `Builder` order: args, kwargs, latent_args."""
        positional = [self.expr(arg) for arg in (node.args if args is None else args)]
        named: list[tuple[Any, ast.expr]] = [
            (key, self.expr(item)) for key, item in node.kwargs.items()
        ]
        keywords: list[ast.keyword] = []
        if node.latent_args is not None:
            latent = self.latent(node.latent_args)
            if named:  # one dict, so that latent_args may override keyword args as in Builder
                merged = ast.Dict(
                    keys=[*(self.literal(k) for k, _ in named), None],
                    values=[*(v for _, v in named), latent],
                )
                keywords.append(ast.keyword(arg=None, value=merged))
            else:
                keywords.append(ast.keyword(arg=None, value=latent))
            return positional, keywords
        for key, item in named:
            if _is_name(key):
                keywords.append(ast.keyword(arg=key, value=item))
            else:
                keywords.append(
                    ast.keyword(arg=None, value=ast.Dict(keys=[self.literal(key)], values=[item]))
                )
        return positional, keywords

    def latent(self, value: Any) -> ast.expr:
        expr = self.expr(value)
        is_mapping = isinstance(value, dict) or (
            isinstance(value, SingletonNode)
            and not isinstance(value, DListNode)
            and value.spec == "named_dict"
            and not value.args
        )
        if is_mapping:
            return expr
        return ast.BoolOp(op=ast.Or(), values=[expr, ast.Dict(keys=[], values=[])])

    def call_expr(self, node: CallableNode) -> ast.expr:
        """The expression for the node's value: a call, or Python syntax for the config built-ins."""
        if isinstance(node, DListNode):
            return ast.List(elts=[self.expr(item) for item in node.values_list()], ctx=ast.Load())
        special = self.config_builtin(node)
        plain = not node.kwargs and node.latent_args is None
        args = node.args
        if special == "getattr" and plain and len(args) == 2 and _is_name(args[1]):
            return ast.Attribute(value=self.expr(args[0]), attr=args[1], ctx=ast.Load())
        if special == "getitem" and plain and len(args) == 2:
            return ast.Subscript(value=self.expr(args[0]), slice=self.expr(args[1]), ctx=ast.Load())
        if special == "call" and args:
            function = self.expr(args[0])
            positional, keywords = self.arguments(node, list(args[1:]))
            return ast.Call(func=function, args=positional, keywords=keywords)
        if special in ("keys", "values", "items") and plain and len(args) == 1:
            method = ast.Attribute(value=self.expr(args[0]), attr=special, ctx=ast.Load())
            view = ast.Call(func=method, args=[], keywords=[])
            return ast.Call(func=self.builtin("list"), args=[view], keywords=[])
        if special == "named_dict" and not args:
            named = [(key, self.expr(item)) for key, item in node.kwargs.items()]
            keys: list[ast.expr | None] = [self.literal(key) for key, _ in named]
            values = [item for _, item in named]
            if node.latent_args is not None:
                keys.append(None)
                values.append(self.latent(node.latent_args))
            return ast.Dict(keys=keys, values=values)
        if special in ("named_list", "named_tuple") and plain:
            elts = [self.expr(arg) for arg in args]
            if special == "named_list":
                return ast.List(elts=elts, ctx=ast.Load())
            return ast.Tuple(elts=elts, ctx=ast.Load())
        function, used = self.callable_expr(node)
        positional, keywords = self.arguments(node, list(args[used:]))
        return ast.Call(func=function, args=positional, keywords=keywords)

    def partial_expr(self, node: CallableNode) -> ast.expr:
        """`partial(callable, *args, **kwargs)` for a partial or a shared factory."""
        function, used = self.callable_expr(node)
        positional, keywords = self.arguments(node, list(node.args[used:]))
        return ast.Call(func=self.partial(), args=[function, *positional], keywords=keywords)

    def config_builtin(self, node: CallableNode) -> str | None:
        return node.spec if node.spec in CONFIG_BUILTINS else None

    def callable_expr(self, node: CallableNode) -> tuple[ast.expr, int]:
        """The callable the node names, and how many leading args it took (`call`'s function)."""
        special = self.config_builtin(node)
        if special == "call":
            if node.args:
                return self.expr(node.args[0]), 1
            return self.helper("_call"), 0
        if special == "named_dict":
            return self.builtin("dict"), 0
        if special == "getattr":
            return self.builtin("getattr"), 0
        if special == "getitem":
            return self.imported("operator", 0, "getitem"), 0
        if special is not None:
            return self.helper("_" + special), 0
        return self.spec_expr(node), 0

    def spec_expr(self, node: CallableNode) -> ast.expr:
        """The import spec as an expression: a builtin, an imported name, or a name loaded from a file."""
        spec = node.spec
        if ":" not in spec:
            head, _, rest = spec.partition(".")
            if not hasattr(builtins, head) or not _is_name(head):
                raise CodegenError(f"{spec!r} is not a builtin; write 'module:Name'", node.origin)
            expr: ast.expr = self.builtin(head)
            attrs = rest.split(".") if rest else []
        else:
            match = SPEC_RE.match(spec)
            if not match:
                raise CodegenError(
                    f"{spec!r} is not of the form 'module:Name' or '/path/file.py:Name'",
                    node.origin,
                )
            module, symbol = match.group("module"), match.group("symbol")
            top, *attrs = symbol.split(".")
            if module == "builtins" and hasattr(builtins, top):
                return self.attributes(self.builtin(top), attrs)
            if not _is_name(top):
                raise CodegenError(f"{spec!r}: {top!r} cannot be imported by name", node.origin)
            if is_file_spec(module):
                path = os.path.abspath(module)
                searchpath = self.searchpath(node, path)
                sym = self.symbol(
                    ("file", path, top), "file", top, path=path, searchpath=searchpath
                )
                expr = self.ref(sym)
            else:
                level = len(module) - len(module.lstrip("."))
                dotted = module[level:]
                if dotted and not all(_is_name(part) for part in dotted.split(".")):
                    raise CodegenError(
                        f"{spec!r}: {dotted!r} is not an importable module name", node.origin
                    )
                expr = self.imported(dotted or None, level, top)
        return self.attributes(expr, attrs)

    def attributes(self, expr: ast.expr, attrs: list[str]) -> ast.expr:
        for attr in attrs:
            if _is_name(attr):
                expr = ast.Attribute(value=expr, attr=attr, ctx=ast.Load())
            else:
                expr = ast.Call(
                    func=self.builtin("getattr"), args=[expr, ast.Constant(attr)], keywords=[]
                )
        return expr

    def searchpath(self, node: CallableNode, path: str) -> tuple[str, ...]:
        value = node.submodule_searchpath
        if isinstance(value, str):
            return (value,)
        if (
            isinstance(value, list | tuple)
            and value
            and all(isinstance(item, str) for item in value)
        ):
            return tuple(value)
        return (os.path.dirname(path),)

    # ---- the module ----------------------------------------------------------------------------

    def module(self) -> ast.Module:
        self.analyse()
        result = self.expr(self.root)
        body = [*self.bodies[MAIN], ast.Return(value=result)]
        defaults: list[ast.expr] = []
        required = [ast.arg(arg=p.name) for p in self.params.values() if p.kind == "required"]
        optional = []
        for p in self.params.values():
            if p.kind == "required":
                continue
            optional.append(ast.arg(arg=p.name))
            defaults.append(self.literal(p.default) if p.kind == "literal" else ast.Constant(None))
        helpers = self.helper_defs()
        varkw = self.allocate()
        arguments = ast.arguments(
            posonlyargs=[],
            args=[*required, *optional],
            vararg=None,
            kwonlyargs=[],
            kw_defaults=[],
            kwarg=ast.arg(arg=varkw) if varkw else None,
            defaults=defaults,
        )
        doc = ast.Expr(ast.Constant("Build the object the config describes."))
        function = _function_def(self.function_name, arguments, [doc, *body])
        where = self.source if self.source else "a config graph"
        statements: list[ast.stmt] = [
            ast.Expr(ast.Constant(f"Generated by forgather from {where}."))
        ]
        statements.extend(self.imports())
        statements.extend(helpers)
        statements.extend(self.file_bindings())
        statements.append(function)
        module = ast.Module(body=statements, type_ignores=[])
        return ast.fix_missing_locations(_Resolve(self.symbols.values()).visit(module))

    def helper_defs(self) -> list[ast.stmt]:
        """Helper functions, parsed from fixed text; their builtins become symbols like any other."""
        wanted = {sym.preferred for sym in self.symbols.values() if sym.kind == "helper"}
        if any(sym.kind == "file" for sym in self.symbols.values()):
            wanted.add("_load_symbol")
        definitions: list[ast.stmt] = []
        for name in sorted(wanted, key=lambda n: (n != "_load_symbol", n)):
            sym = self.symbol(("helper", name), "helper", name)
            (definition,) = ast.parse(HELPER_SOURCES[name]).body
            assert isinstance(definition, ast.FunctionDef)
            local = {a.arg for a in ast.walk(definition) if isinstance(a, ast.arg)}
            local |= {
                n.id
                for n in ast.walk(definition)
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
            }
            local |= {
                alias.name.partition(".")[0]
                for n in ast.walk(definition)
                if isinstance(n, ast.Import)
                for alias in n.names
            }
            for item in ast.walk(definition):
                if (
                    isinstance(item, ast.Name)
                    and item.id not in local
                    and hasattr(builtins, item.id)
                ):
                    item.id = self.builtin(item.id).id
            definition.name = sym.placeholder
            definitions.append(definition)
        return definitions

    def allocate(self) -> str | None:
        """Choose every name: parameters are fixed; locals next; module-level names get aliases."""
        taken = set(keyword.kwlist) | set(self.params) | {self.function_name}
        shadowing = set(self.params) | {self.function_name}
        varkw = None
        if self.relaxed:
            varkw = _unique("kwargs", taken)
            shadowing.add(varkw)
        symbols = list(self.symbols.values())
        needs_module = False
        for sym in sorted((s for s in symbols if s.kind == "builtin"), key=lambda s: s.preferred):
            if sym.preferred in shadowing:
                sym.via_module = needs_module = True
            else:
                sym.name = sym.preferred
                taken.add(sym.name)
        if needs_module:
            self.symbol(("builtins",), "builtins", "builtins")
            symbols = list(self.symbols.values())
        for sym in symbols:
            if sym.kind == "local" and sym.explicit:
                sym.name = _unique(sym.preferred, taken)
        generated = _generated_names()
        for sym in symbols:
            if sym.kind == "local" and not sym.explicit:
                name = next(generated)
                while name in taken:
                    name = next(generated)
                sym.name = name
                taken.add(name)
        for sym in sorted(
            (s for s in symbols if s.kind not in ("local", "builtin")), key=_Symbol.sort_key
        ):
            sym.name = _unique(sym.preferred, taken)
        return varkw

    def imports(self) -> list[ast.stmt]:
        statements: list[ast.stmt] = []
        groups: dict[tuple[int, str], list[_Symbol]] = {}
        for sym in self.symbols.values():
            if sym.kind == "builtins":
                alias = None if sym.name == "builtins" else sym.name
                statements.append(ast.Import(names=[ast.alias(name="builtins", asname=alias)]))
            elif sym.kind == "import":
                groups.setdefault((sym.level, sym.module or ""), []).append(sym)
        for (level, module), members in sorted(groups.items()):
            members.sort(key=lambda s: (s.preferred, s.name or ""))
            names = [
                ast.alias(name=s.preferred, asname=None if s.name == s.preferred else s.name)
                for s in members
            ]
            statements.append(ast.ImportFrom(module=module or None, names=names, level=level))
        return statements

    def file_bindings(self) -> list[ast.stmt]:
        files = sorted(
            (s for s in self.symbols.values() if s.kind == "file"),
            key=lambda s: (s.path, s.preferred),
        )
        if not files:
            return []
        loader = self.symbols[("helper", "_load_symbol")]
        statements: list[ast.stmt] = []
        for sym in files:
            searchpath = ast.List(elts=[ast.Constant(p) for p in sym.searchpath], ctx=ast.Load())
            call = ast.Call(
                func=ast.Name(id=loader.name, ctx=ast.Load()),
                args=[ast.Constant(sym.path), ast.Constant(sym.preferred), searchpath],
                keywords=[],
            )
            statements.append(
                ast.Assign(targets=[ast.Name(id=sym.name, ctx=ast.Store())], value=call)
            )
        return statements


def _origin(value: Any) -> Any:
    return getattr(value, "origin", None)


def _generated_names():
    yield from (name + "_" for name in GREEK)
    index = 0
    while True:
        index += 1
        yield f"node_{index}"


def _function_def(name: str, arguments: ast.arguments, body: list[ast.stmt]) -> ast.FunctionDef:
    function = ast.FunctionDef(
        name=name, args=arguments, body=body, decorator_list=[], returns=None
    )
    if "type_params" in ast.FunctionDef._fields:  # Python 3.12+
        function.type_params = []
    return function


class _Resolve(ast.NodeTransformer):
    """Replace placeholder names with the names `allocate` chose."""

    def __init__(self, symbols: Any):
        symbols = list(symbols)
        self.by_placeholder = {sym.placeholder: sym for sym in symbols}
        self.builtins_name = next((s.name for s in symbols if s.kind == "builtins"), "builtins")

    def visit_Name(self, node: ast.Name) -> ast.expr:
        sym = self.by_placeholder.get(node.id)
        if sym is None:
            return node
        if sym.via_module:
            return ast.Attribute(
                value=ast.Name(id=self.builtins_name, ctx=ast.Load()),
                attr=sym.preferred,
                ctx=node.ctx,
            )
        return ast.Name(id=sym.name, ctx=node.ctx)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        sym = self.by_placeholder.get(node.name)
        if sym is not None:
            node.name = sym.name
        self.generic_visit(node)
        return node
