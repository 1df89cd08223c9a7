"""What a snippet does with its values, read statically from its AST.

- `usage_shapes`: for every name (and `name.attr` path) the snippet reads, the shape its uses imply:
  string keys it subscripts or `.get`s, attributes it reads, methods it calls, what iterating or
  indexing it yields, how many targets it is unpacked into, what calling it returns, whether it is a
  context manager, a number, a string or a slice bound. `build_value` turns a shape into value code
  (both predictors use it: the rule-based one as its value, the LLM-guided one as a hint).
- `DataFlow`: which paths each binding's value comes from (flow-insensitive, transitive), so that an
  exception can be blamed on injected values by what the failing expression reads, not by line.
  Calls whose result type does not depend on their arguments' values (`len`, `str`, `int`, ...),
  comparisons and f-strings cut the flow: `n = len(rows)` makes `n` an int whatever `rows` was.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

_STR_METHODS = {
    "split",
    "strip",
    "lower",
    "upper",
    "startswith",
    "endswith",
    "replace",
    "join",
    "format",
    "encode",
    "find",
    "rstrip",
    "lstrip",
    "splitlines",
    "title",
    "isdigit",
    "count",
    "capitalize",
    "partition",
    "rsplit",
    "zfill",
    "center",
    "ljust",
    "rjust",
    "isalpha",
    "isspace",
    "casefold",
}
_LIST_METHODS = {"append", "extend", "pop", "sort", "insert", "remove", "index", "reverse", "copy", "clear"}
_DICT_METHODS = {"items", "keys", "values", "get", "update", "setdefault", "pop", "copy"}
# Builtins whose result's type is fixed (or that raise on the spot): they cut the data flow.
TYPE_FIXING = {
    "len",
    "str",
    "repr",
    "int",
    "float",
    "bool",
    "round",
    "isinstance",
    "hash",
    "id",
    "ord",
    "chr",
    "format",
    "type",
    "abs",
    "bin",
    "hex",
    "oct",
    "callable",
    "hasattr",
    "divmod",
}
_NUMERIC_ARGS = {
    "range": "int",
    "abs": "number",
    "round": "float",
    "divmod": "number",
    "chr": "int",
    "bin": "int",
    "hex": "int",
}
_SEQUENCE_ARGS = {
    "len",
    "sum",
    "sorted",
    "enumerate",
    "zip",
    "max",
    "min",
    "list",
    "tuple",
    "set",
    "any",
    "all",
    "reversed",
    "map",
    "filter",
}
_MUTATORS = {"append", "extend", "insert", "add", "update", "setdefault", "appendleft", "extendleft", "push"}
_STRING_ARGS = {"int": "digits", "float": "digits", "open": "str", "ord": "str"}  # int(x): x a number as text

# Naming conventions (LExecutor-style): a value class from the name alone.
NAME_RULES = [
    (r"^(is|has|should|can|use|enable|allow)_|^(flag|ok|done|verbose|debug|active|enabled|valid)$", "bool"),
    (
        r"^(n|i|j|k|num|count|size|idx|index|length|width|height|total|limit|depth|level|port|year|age|qty|quantity|"
        r"initial|start|stop|step|offset|retries|attempts|timeout|id|pos|page|day|month|hour|minute|second|seconds|"
        r"capacity|stock|score|points|rank|priority|version|code|status|status_code)$"
        r"|^(n|num|max|min)_|_(count|size|idx|index|id|len|num|limit|attempts|qty|days|seconds|code)$",
        "int",
    ),
    (r"^[xyz]\d*$|^[xyz]_|^(lat|lon|lng)$", "float"),
    (
        r"(rate|ratio|prob|alpha|beta|lr|weight|temperature|threshold|eps|mean|std|price|amount|cost|balance|"
        r"salary|discount|tax|percent|value|total_\w+|distance|speed|duration)$",
        "float",
    ),
    (
        r"^(name|path|text|msg|message|s|line|prefix|suffix|url|key|label|title|word|sep|filename|fmt|email|host|"
        r"string|content|char|token|query|pattern|regex|city|country|user|username|author|body|description|"
        r"category|kind|type|mode|tag|date|date_str|first|last|currency|unit|lang|sku|slug|street)$"
        r"|_(name|path|str|text|dir|file|url|key|prefix|suffix|email|label|type)$",
        "str",
    ),
    (
        r"^(items|values|rows|lines|words|data|results|records|elements|lst|list|arr|array|seq|nums|numbers|tags|"
        r"entries|children|nodes|users|orders|events)$|_(list|items|rows|ids|names)$|[^s]s$",
        "list",
    ),
    (
        r"^(d|dict|mapping|config|cfg|kwargs|params|options|opts|headers|counts|cache|lookup|settings|meta|"
        r"metadata|info|payload|attrs|env|stats)$|_(dict|map|by_\w+|config|info)$",
        "dict",
    ),
    (r"^(f|fn|func|callback|handler|hook|cb|factory|predicate|transform)$|_(fn|func|callback|handler)$", "callable"),
]


def name_class(name: str) -> str | None:
    lowered = name.lower()
    for pattern, value_class in NAME_RULES:
        if re.search(pattern, lowered):
            return value_class
    return None


@dataclass
class Shape:
    votes: list[str] = field(default_factory=list)  # str | int | float | number | bool | list | dict | callable ...
    keys: dict[str, Shape] = field(default_factory=dict)  # x["k"], x.get("k"), "k" in x
    attrs: dict[str, Shape] = field(default_factory=dict)  # x.a (read, or called as a method: see methods)
    methods: set[str] = field(default_factory=set)  # x.m(...)
    elem: Shape | None = None  # for e in x, x[i], x[1:], comprehensions
    parts: dict[int, Shape] = field(default_factory=dict)  # a, b = x (position -> shape)
    arity: int | None = None
    returns: Shape | None = None  # x(...)
    passed_to: set[str] = field(default_factory=set)  # f(x): the callees (a hint in words, not a constraint)

    def element(self) -> Shape:
        if self.elem is None:
            self.elem = Shape()
        return self.elem

    def key(self, k: str) -> Shape:
        return self.keys.setdefault(k, Shape())

    def attr(self, a: str) -> Shape:
        return self.attrs.setdefault(a, Shape())

    def result(self) -> Shape:
        if self.returns is None:
            self.returns = Shape()
        return self.returns

    def is_empty(self) -> bool:
        return not (
            self.votes
            or self.keys
            or self.attrs
            or self.methods
            or self.elem
            or self.parts
            or self.returns
            or self.arity
        )


def _get_key(call: ast.Call) -> str | None:
    """The string key of `x.get("k", ...)`, else None."""
    if (
        isinstance(call.func, ast.Attribute)
        and call.func.attr == "get"
        and call.args
        and isinstance(call.args[0], ast.Constant)
        and isinstance(call.args[0].value, str)
    ):
        return call.args[0].value
    return None


def parse_any(code: str) -> ast.Module:
    """Module-level code, or a function body (return/yield at top level) as a module of its statements."""
    try:
        compile(code, "<snippet>", "exec")
        return ast.parse(code)
    except SyntaxError:
        wrapped = ast.parse("def _f():\n" + "\n".join("    " + line for line in code.splitlines()))
        return ast.Module(body=wrapped.body[0].body, type_ignores=[])


def path_of(node: ast.AST) -> str | None:
    """`x` or `x.a.b` for a name or an attribute chain on a name; None for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = path_of(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


class _ShapeBuilder:
    def __init__(self, tree: ast.Module):
        self.tree = tree
        self.names: dict[str, Shape] = {}
        self.bound_to: dict[str, ast.expr] = {}  # name -> the expression first assigned to it
        self.loop_of: dict[str, tuple[ast.expr, int | None, bool]] = {}  # name -> (iterable, position, enumerate)
        self.parents: dict[ast.AST, ast.AST] = {}
        for parent in ast.walk(tree):
            for child in ast.iter_child_nodes(parent):
                self.parents[child] = parent
        self._resolving: set[str] = set()
        self._collect_bindings()

    def _collect_bindings(self) -> None:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                if isinstance(target, ast.Name):
                    self.bound_to.setdefault(target.id, node.value)
                elif isinstance(target, (ast.Tuple, ast.List)):
                    for i, elt in enumerate(target.elts):
                        if isinstance(elt, ast.Name):
                            self.loop_of.setdefault(elt.id, (node.value, i, "unpack"))
                            self._unpacked(node.value, len(target.elts))
            elif isinstance(node, (ast.For, ast.comprehension)):
                self._bind_loop(node.target, node.iter)
            elif isinstance(node, ast.withitem) and isinstance(node.optional_vars, ast.Name):
                self.bound_to.setdefault(node.optional_vars.id, node.context_expr)

    def _unpacked(self, value: ast.expr, n: int) -> None:
        self._pending_arity = getattr(self, "_pending_arity", [])
        self._pending_arity.append((value, n))

    def _bind_loop(self, target: ast.expr, iterable: ast.expr) -> None:
        enumerated = (
            isinstance(iterable, ast.Call)
            and isinstance(iterable.func, ast.Name)
            and iterable.func.id == "enumerate"
            and iterable.args
        )
        if isinstance(target, ast.Name):
            self.loop_of.setdefault(target.id, (iterable, None, False))
        elif isinstance(target, (ast.Tuple, ast.List)):
            for i, elt in enumerate(target.elts):
                if isinstance(elt, ast.Name):
                    self.loop_of.setdefault(elt.id, (iterable, i, bool(enumerated)))
                elif isinstance(elt, (ast.Tuple, ast.List)) and enumerated and i == 1:
                    self._bind_loop(elt, iterable.args[0])

    # -- the shape an expression denotes ------------------------------------------------------
    def shape_of(self, node: ast.expr) -> Shape | None:
        if isinstance(node, ast.Name):
            return self.name_shape(node.id)
        if isinstance(node, ast.Attribute):
            base = self.shape_of(node.value)
            return base.attr(node.attr) if base is not None else None
        if isinstance(node, ast.Subscript):
            base = self.shape_of(node.value)
            if base is None:
                return None
            key = node.slice
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                return base.key(key.value)
            return base.element()
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                owner = self.shape_of(func.value)
                if owner is None:
                    return None
                if (key := _get_key(node)) is not None:
                    return owner.key(key)
                if func.attr in ("items", "values", "keys", "copy") and not node.args:
                    return None
                owner.methods.add(func.attr)
                return owner.attr(func.attr).result()
            if isinstance(func, ast.Name) and func.id in ("iter", "list", "sorted", "reversed", "tuple") and node.args:
                return self.shape_of(node.args[0])
            base = self.shape_of(func)
            return base.result() if base is not None else None
        return None

    def name_shape(self, name: str) -> Shape:
        if name in self.names:
            return self.names[name]
        shape = None
        if name not in self._resolving:
            self._resolving.add(name)
            if name in self.bound_to:
                shape = self.shape_of(self.bound_to[name])
            elif name in self.loop_of:
                iterable, position, enumerated = self.loop_of[name]
                if enumerated == "unpack":
                    base = self.shape_of(iterable)
                    shape = base.parts.setdefault(position, Shape()) if base is not None else None
                elif enumerated:
                    shape = (
                        self.shape_of(iterable.args[0]).element()
                        if position == 1 and self.shape_of(iterable.args[0]) is not None
                        else None
                    )
                else:
                    shape = self._loop_element(iterable, position)
            self._resolving.discard(name)
        if shape is None:
            shape = Shape()
        self.names[name] = shape
        return shape

    def _loop_element(self, iterable: ast.expr, position: int | None) -> Shape | None:
        if (
            isinstance(iterable, ast.Call)
            and isinstance(iterable.func, ast.Attribute)
            and not iterable.args
            and iterable.func.attr in ("items", "values", "keys")
        ):
            owner = self.shape_of(iterable.func.value)
            if owner is None:
                return None
            owner.votes.append("dict")
            if iterable.func.attr == "keys" or (iterable.func.attr == "items" and position == 0):
                return None
            if iterable.func.attr == "items" and position == 1 or iterable.func.attr == "values":
                # the dict's values: keyed by whatever, one shape for all of them
                return owner.key("*")
            return None
        base = self.shape_of(iterable)
        if base is None:
            return None
        elem = base.element()
        if position is None:
            return elem
        return elem.parts.setdefault(position, Shape())

    # -- constraints from each use ----------------------------------------------------------
    def run(self) -> None:
        for value, n in getattr(self, "_pending_arity", []):
            shape = self.shape_of(value)
            if shape is not None:
                shape.arity = n
        for node in ast.walk(self.tree):
            if isinstance(node, ast.For | ast.comprehension):
                target = node.target
                shape = self.shape_of(node.iter)
                if shape is not None:
                    shape.votes.append("list")
                    if isinstance(target, (ast.Tuple, ast.List)):
                        shape.element().arity = len(target.elts)
            elif isinstance(node, ast.Call):
                self._call(node)
            elif isinstance(node, ast.Subscript):
                self._subscript(node)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                parent = self.parents.get(node)
                if not (isinstance(parent, ast.Call) and parent.func is node):
                    shape = self.shape_of(node.value)
                    if shape is not None:
                        shape.votes.append("object")
                        shape.attr(node.attr)
            elif isinstance(node, ast.BinOp):
                for side, other in ((node.left, node.right), (node.right, node.left)):
                    shape = self.shape_of(side)
                    if shape is not None:
                        shape.votes.append(_operand_class(other, node.op))
            elif isinstance(node, ast.AugAssign):
                shape = (
                    self.shape_of(node.target)
                    if not isinstance(node.target, ast.Name)
                    else self.name_shape(node.target.id)
                )
                if shape is not None:
                    shape.votes.append(_operand_class(node.value, node.op))
            elif isinstance(node, ast.Compare):
                self._compare(node)
            elif isinstance(node, (ast.If, ast.While, ast.IfExp)) or isinstance(node, ast.BoolOp):
                tests = node.values if isinstance(node, ast.BoolOp) else [node.test]
                for test in tests:
                    shape = self.shape_of(test)
                    if shape is not None:
                        shape.votes.append("bool")
            elif isinstance(node, ast.withitem):
                shape = self.shape_of(node.context_expr)
                if shape is not None:
                    shape.votes.append("context")
            elif isinstance(node, ast.Dict):
                for k, v in zip(node.keys, node.values):
                    if k is None and (shape := self.shape_of(v)) is not None:
                        shape.votes.append("dict")
            elif isinstance(node, ast.JoinedStr):
                for part in node.values:
                    if isinstance(part, ast.FormattedValue) and part.format_spec is not None:
                        spec = ast.unparse(part.format_spec)
                        if (shape := self.shape_of(part.value)) is not None and re.search(r"[dfeg%]", spec):
                            shape.votes.append("float" if re.search(r"[feg%]", spec) else "int")

    def _call(self, node: ast.Call) -> None:
        func = node.func
        callee = path_of(func)
        if callee is not None:
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                if (shape := self.shape_of(arg)) is not None:
                    shape.passed_to.add(f"{callee}()")
        if isinstance(func, ast.Attribute):
            owner = self.shape_of(func.value)
            if owner is not None:
                owner.methods.add(func.attr)
                vote = (
                    "str"
                    if func.attr in _STR_METHODS
                    else "list"
                    if func.attr in _LIST_METHODS
                    else "dict"
                    if func.attr in _DICT_METHODS
                    else None
                )
                if (key := _get_key(node)) is not None:
                    owner.key(key)
                if vote:
                    owner.votes.append(vote)
            if func.attr == "join" and node.args and (shape := self.shape_of(node.args[0])) is not None:
                shape.votes.append("list")
                shape.element().votes.append("str")
        else:
            shape = self.shape_of(func)
            if shape is not None:
                shape.votes.append("callable")
        if isinstance(func, ast.Name):
            for arg in node.args:
                shape = self.shape_of(arg)
                if shape is None:
                    continue
                if func.id in _NUMERIC_ARGS:
                    shape.votes.append(_NUMERIC_ARGS[func.id])
                elif func.id in _SEQUENCE_ARGS:
                    shape.votes.append("list")
                    if func.id == "sum":
                        shape.element().votes.append("number")
                elif func.id in _STRING_ARGS:
                    shape.votes.append(_STRING_ARGS[func.id])

    def _subscript(self, node: ast.Subscript) -> None:
        shape = self.shape_of(node.value)
        key = node.slice
        if isinstance(key, ast.Slice):
            if shape is not None:
                shape.votes.append("list")
            for bound in (key.lower, key.upper, key.step):
                if bound is not None and (bound_shape := self.shape_of(bound)) is not None:
                    bound_shape.votes.append("int")
            return
        if shape is not None:
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                shape.votes.append("dict")
                shape.key(key.value)
            elif isinstance(key, ast.Constant) and isinstance(key.value, int):
                shape.votes.append("list")
                shape.element()
        key_shape = self.shape_of(key) if not isinstance(key, ast.Constant) else None
        if key_shape is not None and shape is not None and "dict" not in shape.votes:
            key_shape.votes.append("int")

    def _compare(self, node: ast.Compare) -> None:
        operands = [node.left, *node.comparators]
        for i, op in enumerate(node.ops):
            left, right = operands[i], operands[i + 1]
            if isinstance(op, (ast.In, ast.NotIn)):
                container = self.shape_of(right)
                if container is not None and isinstance(left, ast.Constant) and isinstance(left.value, str):
                    container.votes.append("dict")
                    container.key(left.value)
                continue
            ordering = isinstance(op, (ast.Lt, ast.LtE, ast.Gt, ast.GtE))
            for side, other in ((left, right), (right, left)):
                shape = self.shape_of(side)
                if shape is not None and isinstance(other, ast.Constant) and other.value is not None:
                    shape.votes.append(_literal_class(other.value))
                elif shape is not None and ordering and not isinstance(other, ast.Constant):
                    shape.votes.append("number")  # a < b between two values: numbers, most often


def _literal_class(value) -> str:
    return {bool: "bool", int: "int", float: "float", str: "str"}.get(type(value), "object")


def _operand_class(other: ast.expr, op: ast.operator) -> str:
    if isinstance(other, ast.Constant):
        if isinstance(other.value, str):
            return "str" if isinstance(op, ast.Add) else "int" if isinstance(op, ast.Mult) else "object"
        if isinstance(other.value, float) or isinstance(op, ast.Div):
            return "float"
    if isinstance(other, ast.JoinedStr) and isinstance(op, ast.Add):
        return "str"
    if isinstance(op, ast.Mod) and isinstance(other, ast.Constant) and isinstance(other.value, str):
        return "object"
    return "number"


def usage_shapes(code: str) -> _ShapeBuilder:
    builder = _ShapeBuilder(parse_any(code))
    builder.run()
    return builder


def shape_for(code: str, kind: str, name: str) -> Shape:
    """The merged shape of every use of `name` (kind "name") or of every `.name` attribute (kind "attr")."""
    builder = usage_shapes(code)
    if kind == "name":
        return builder.name_shape(name)
    merged = Shape()
    for node in ast.walk(builder.tree):
        if isinstance(node, ast.Attribute) and node.attr == name:
            owner = builder.shape_of(node.value)
            if owner is not None and name in owner.attrs:
                _merge(merged, owner.attrs[name])
                if name in owner.methods:
                    merged.votes.append("callable")
    return merged


def _merge(into: Shape, other: Shape) -> None:
    into.votes += other.votes
    into.methods |= other.methods
    for k, s in other.keys.items():
        _merge(into.key(k), s)
    for a, s in other.attrs.items():
        _merge(into.attr(a), s)
    if other.elem is not None:
        _merge(into.element(), other.elem)
    for i, s in other.parts.items():
        _merge(into.parts.setdefault(i, Shape()), s)
    if other.returns is not None:
        _merge(into.result(), other.returns)
    into.arity = into.arity or other.arity
    into.passed_to |= other.passed_to


# -- shapes to values -----------------------------------------------------------------------------
_LEAVES = {"bool": "True", "int": "2", "number": "2", "float": "1.5", "digits": "'42'", "str": "'text'", "none": "None"}
_PREFERENCE = ("callable", "dict", "list", "digits", "str", "float", "int", "number", "bool", "context", "object")


def value_class(shape: Shape, name: str) -> str:
    """The most telling vote (a call beats an attribute read), else the structure, else the name."""
    votes = set(shape.votes)
    if shape.methods & _STR_METHODS and not shape.keys and shape.elem is None:
        votes.add("str")
    if shape.keys:
        votes.add("dict")
    if shape.returns is not None:
        votes.add("callable")
    if "int" in votes and "float" in votes:
        votes.discard("int")
    if "digits" in votes and votes & {"int", "float", "number"}:
        votes.discard("digits")  # int(x) takes a number too, and x is also computed with
    if "str" in votes and "list" in votes and (shape.methods & _STR_METHODS) and not shape.elem:
        votes.discard("list")
    for preferred in _PREFERENCE:
        if preferred in votes and not (preferred == "object" and len(votes) > 1):
            return preferred
    if shape.elem is not None or shape.arity:
        return "list"
    return name_class(name) or ("object" if shape.attrs or shape.methods else "object")


def build_value(shape: Shape, name: str, depth: int = 0) -> str:
    """Python code for a value that fits `shape` (`name` picks leaves by naming convention)."""
    if depth > 4:
        return "None"
    value_kind = value_class(shape, name)
    if value_kind == "callable":
        result = (
            build_value(shape.returns, name, depth + 1) if shape.returns and not shape.returns.is_empty() else "None"
        )
        return f"lambda *args, **kwargs: {result}"
    if value_kind == "dict":
        items = [f"{k!r}: {build_value(s, k, depth + 1)}" for k, s in shape.keys.items() if k != "*"]
        if "*" in shape.keys:
            items += [f"'k{i}': {build_value(shape.keys['*'], name, depth + 1)}" for i in (1, 2)]
        return "{" + ", ".join(items or ["'key': 'value'"]) + "}"
    if value_kind == "list":
        if shape.arity and (shape.elem is None or shape.elem.is_empty()):
            parts = [build_value(shape.parts.get(i, Shape()), f"{name}_{i}", depth + 1) for i in range(shape.arity)]
            return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"
        elem = shape.elem
        if elem is None or elem.is_empty():
            singular = name[:-1] if name.endswith("s") and len(name) > 2 else name
            leaf = name_class(singular)
            item = (
                _LEAVES.get(leaf, "1")
                if leaf not in (None, "list", "dict", "callable")
                else ("{'key': 'value'}" if leaf == "dict" else "1")
            )
            return f"[{item}, {item}]"
        item = build_value(elem, name[:-1] if name.endswith("s") else name, depth + 1)
        return f"[{item}, {item}]"
    if value_kind == "context":
        return "__import__('contextlib').nullcontext(types.SimpleNamespace())"
    if value_kind == "object" or shape.attrs:
        if value_kind in ("str", "int", "float", "number", "bool") and not shape.attrs:
            return _LEAVES[value_kind]
        if value_kind == "object" or value_kind not in _LEAVES:
            fields = [
                f"{a}={build_value(s, a, depth + 1)}"
                for a, s in shape.attrs.items()
                if a.isidentifier() and not a.startswith("__")
            ]
            return "types.SimpleNamespace(" + ", ".join(fields) + ")"
    if value_kind == "str" and name_class(name) == "str" and re.search(r"(date)", name.lower()):
        return "'2024-01-31'"
    return _LEAVES.get(value_kind, "types.SimpleNamespace()")


def describe(shape: Shape, depth: int = 0) -> str:
    """How the snippet uses a value, in words (for the LLM's prompt)."""
    if depth > 2:
        return ""
    parts = []
    if shape.keys:
        parts.append("keys " + ", ".join(repr(k) for k in shape.keys if k != "*"))
    if shape.attrs:
        attrs = [a for a in shape.attrs if a not in shape.methods]
        if attrs:
            parts.append("attributes " + ", ".join(attrs))
    if shape.methods:
        parts.append("methods " + ", ".join(sorted(shape.methods)))
    if shape.elem is not None:
        inner = describe(shape.elem, depth + 1)
        parts.append("iterated or indexed" + (f" (each item: {inner})" if inner else ""))
    if shape.arity:
        parts.append(f"unpacked into {shape.arity} values")
    if shape.returns is not None:
        inner = describe(shape.returns, depth + 1)
        parts.append("called" + (f" (its result: {inner})" if inner else ""))
    plain = sorted({v for v in shape.votes if v in ("str", "int", "float", "number", "bool", "context")})
    if plain:
        parts.append("used as " + "/".join(plain))
    if shape.passed_to:
        parts.append("passed to " + ", ".join(sorted(shape.passed_to)[:3]))
    return "; ".join(parts)


# -- data flow ------------------------------------------------------------------------------------
def _reads(node: ast.AST, cut: bool) -> set[str]:
    """Paths an expression reads. `cut`: skip the arguments of type-fixing builtins, comparisons,
    boolean tests and f-strings (their results' types do not come from those values)."""
    found: set[str] = set()

    def visit(n: ast.AST) -> None:
        if cut and isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in TYPE_FIXING:
            return
        if (
            cut
            and isinstance(n, (ast.Compare, ast.JoinedStr, ast.UnaryOp))
            and (not isinstance(n, ast.UnaryOp) or isinstance(n.op, ast.Not))
        ):
            return
        if isinstance(n, ast.Name) and isinstance(getattr(n, "ctx", None), (ast.Store, ast.Del)):
            return
        if isinstance(n, (ast.Name, ast.Attribute)) and (path := path_of(n)) is not None:
            found.add(path)
            if isinstance(n, ast.Attribute):
                visit(n.value)
            return
        if isinstance(n, ast.Lambda):
            return  # a lambda's body runs later, when it is called
        if cut and isinstance(n, (ast.ListComp, ast.SetComp, ast.GeneratorExp)):
            return visit(n.elt)  # the items come from the element expression (its loop names are bound)
        if cut and isinstance(n, ast.DictComp):
            visit(n.key)
            return visit(n.value)
        for child in ast.iter_child_nodes(n):
            visit(child)

    visit(node)
    return found


class DataFlow:
    """Flow-insensitive: path -> the paths its bound values are computed from."""

    def __init__(self, code: str | ast.Module):
        tree = parse_any(code) if isinstance(code, str) else code
        self.deps: dict[str, set[str]] = {}
        self.assigned: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    self._bind(target, _reads(node.value, cut=True))
            elif isinstance(node, (ast.AnnAssign, ast.NamedExpr)) and node.value is not None:
                self._bind(node.target, _reads(node.value, cut=True))
            elif isinstance(node, ast.AugAssign):
                self._bind(node.target, _reads(node.value, cut=True) | _reads(node.target, cut=False))
            elif isinstance(node, (ast.For, ast.comprehension)):
                self._bind_loop(node.target, node.iter)
            elif isinstance(node, ast.withitem) and node.optional_vars is not None:
                self._bind(node.optional_vars, _reads(node.context_expr, cut=True))
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                self._bind(ast.Name(node.name), set())
                if isinstance(node, ast.FunctionDef):
                    calls = [
                        c
                        for c in ast.walk(tree)
                        if isinstance(c, ast.Call)
                        and path_of(c.func) is not None
                        and path_of(c.func).split(".")[-1] == node.name
                    ]
                    sources = set().union(*[_reads(a, cut=True) for c in calls for a in [*c.args, *c.keywords]])
                    for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]:
                        self._bind(ast.Name(arg.arg), set(sources) | {f"param#{arg.arg}"})
            elif isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Attribute) and func.attr in _MUTATORS and path_of(func.value) is not None:
                    # rows.append(x), seen.update(y): the receiver now also holds the arguments' values
                    held = self.deps.setdefault(path_of(func.value), set())
                    held.update(*[_reads(a, cut=True) for a in node.args])
                for arg in [*node.args, *(k.value for k in node.keywords)]:
                    if isinstance(arg, ast.Lambda):  # sorted(people, key=lambda p: ...): p comes from people
                        others = set().union(*[_reads(a, cut=True) for a in node.args if a is not arg]) | _reads(
                            node.func, cut=True
                        )
                        for param in arg.args.args:
                            self._bind(ast.Name(param.arg), others)
            elif isinstance(node, ast.ExceptHandler) and node.name:
                self._bind(ast.Name(node.name), set())
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    self._bind(ast.Name(alias.asname or alias.name.split(".")[0]), {f"import#{alias.name}"})
            elif isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    module = f"{node.module}." if node.module else ""
                    self._bind(ast.Name(alias.asname or alias.name), {f"import#{module}{alias.name}"})

    def _bind(self, target: ast.AST, sources: set[str]) -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                self._bind(elt, sources)
        elif isinstance(target, ast.Starred):
            self._bind(target.value, sources)
        elif isinstance(target, ast.Subscript):
            base = path_of(target.value)
            if base is not None:  # d[k] = v: d now also holds v
                self.deps.setdefault(base, set()).update(sources)
        elif (path := path_of(target)) is not None:
            self.assigned.add(path)
            self.deps.setdefault(path, set()).update(sources)

    def _bind_loop(self, target: ast.AST, iterable: ast.expr) -> None:
        if isinstance(iterable, ast.Call) and isinstance(iterable.func, ast.Name) and iterable.args:
            if iterable.func.id == "range":
                return self._bind(target, set())
            if iterable.func.id == "enumerate" and isinstance(target, (ast.Tuple, ast.List)) and len(target.elts) == 2:
                self._bind(target.elts[0], set())
                return self._bind(target.elts[1], _reads(iterable.args[0], cut=True))
        self._bind(target, _reads(iterable, cut=True))

    def sources(self, reads: set[str]) -> set[str]:
        """Every path the values read come from, transitively (a path never assigned in the snippet
        stands for itself and, for `a.b`, for its base `a`)."""
        seen: set[str] = set()
        stack = list(reads)
        while stack:
            path = stack.pop()
            if path in seen:
                continue
            seen.add(path)
            if path in self.assigned:
                stack.extend(self.deps.get(path, ()))
                continue
            if "." in path:
                stack.append(path.rsplit(".", 1)[0])
            stack.extend(self.deps.get(path, ()))
        return seen


def involves_injected(flow: DataFlow, reads: set[str], injected: list[str]) -> list[str]:
    """The injected keys (name#x, attr#x, import#m) the read paths' values may come from."""
    sources = flow.sources(reads)
    roots = {p.split(".", 1)[0] for p in sources}
    attrs = {p.rsplit(".", 1)[1] for p in sources if "." in p}
    blamed = []
    for key in injected:
        kind, name = key.split("#", 1)
        if kind == "name" and name in roots:
            blamed.append(key)
        elif kind == "attr" and name in attrs:
            blamed.append(key)
        elif kind == "import" and (key in sources or name.split(".")[0] in roots):
            blamed.append(key)
    return blamed
