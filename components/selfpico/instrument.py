"""Instrumentation in LExecutor's style, on Python's own `ast` (libcst is not needed for this).

- `_pico_l_(iid)` precedes every statement of the snippet: line coverage = distinct executed
  markers / markers.
- A name read `x` becomes `_pico_n_(iid, "x", lambda: x)`: the real lookup runs first; only a
  NameError makes the runtime inject a predicted value. (Class bodies keep plain names: a lambda
  there cannot see the class namespace.)
- An attribute read `o.a` becomes `_pico_a_(iid, o, "a")`: injection on AttributeError.
- `import m as x` / `from m import y` become `x = _pico_import_(iid, "m", ...)`: injection on
  ImportError, so a missing package does not end the run.
- An augmented assignment reads its target first: `x += e` becomes
  `x = _pico_aug_("iadd", _pico_n_(iid, "x", lambda: x), e)`, `o.a += e` and `o[k] += e` go
  through `_pico_aug_attr_` / `_pico_aug_item_`, so an undefined total or `self.count` is predicted
  (in-place semantics kept: operator.iadd and friends).
Binding forms (unpacking, `with ... as`, comprehension and loop targets, `self.x = ...`) need no
hook of their own: their values are reads, and reads are hooked.
Snippets that are function bodies are wrapped in `def _pico_snippet_(): ...` (so `return` and
`yield` stay legal); the wrapper itself carries no marker.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from components.selfpico.runtime import HOOK_NAMES

_INPLACE = {
    ast.Add: "iadd",
    ast.Sub: "isub",
    ast.Mult: "imul",
    ast.Div: "itruediv",
    ast.FloorDiv: "ifloordiv",
    ast.Mod: "imod",
    ast.Pow: "ipow",
    ast.LShift: "ilshift",
    ast.RShift: "irshift",
    ast.BitOr: "ior",
    ast.BitXor: "ixor",
    ast.BitAnd: "iand",
    ast.MatMult: "imatmul",
}
WRAPPER = "_pico_snippet_"


class InstrumentationError(ValueError):
    """The snippet cannot be instrumented (a syntax error, or a construct the runtime cannot host)."""


@dataclass(frozen=True)
class Instrumented:
    source: str  # the rewritten program
    n_markers: int  # statements that carry a line marker
    marker_lines: dict[int, int]  # marker id -> line number in the original snippet
    wrapped: bool  # the snippet was a function body wrapped in WRAPPER
    line_markers: dict[int, int]  # line of the instrumented source -> marker of the innermost statement on it


def _thunk(body: ast.expr) -> ast.Lambda:
    return ast.Lambda(
        args=ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[]), body=body
    )


def _call(func: str, *args: ast.expr) -> ast.Call:
    return ast.Call(func=ast.Name(func, ast.Load()), args=list(args), keywords=[])


class _Rewriter(ast.NodeTransformer):
    def __init__(self) -> None:
        self.next_iid = 0
        self.marker_lines: dict[int, int] = {}
        self.class_depth = 0  # >0 while directly inside a class body (not a method)

    def _iid(self) -> int:
        self.next_iid += 1
        return self.next_iid

    # --- statements: a marker before each, in every body -----------------------------------
    def _mark_body(self, body: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for stmt in body:
            iid = self._iid()
            self.marker_lines[iid] = stmt.lineno
            out.append(ast.Expr(_call("_pico_l_", ast.Constant(iid))))
            new = self.visit(stmt)
            out.extend(new if isinstance(new, list) else [new])
        return out

    def generic_visit(self, node: ast.AST) -> ast.AST:
        for field in ("body", "orelse", "finalbody"):
            block = getattr(node, field, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                setattr(node, field, self._mark_body(block))
        if isinstance(node, ast.Try) or isinstance(node, getattr(ast, "TryStar", ast.Try)):
            for handler in node.handlers:
                handler.body = self._mark_body(handler.body)
        if isinstance(node, ast.Match):
            for case in node.cases:
                case.body = self._mark_body(case.body)
                case.pattern = self.visit(case.pattern)
                if case.guard is not None:
                    case.guard = self.visit(case.guard)
            node.subject = self.visit(node.subject)
            return node
        for field, value in ast.iter_fields(node):
            if field in ("body", "orelse", "finalbody", "handlers", "cases"):
                continue
            if isinstance(value, list):
                setattr(node, field, [self.visit(v) if isinstance(v, ast.AST) else v for v in value])
            elif isinstance(value, ast.AST):
                setattr(node, field, self.visit(value))
        return node

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.ClassDef:
        node.bases = [self.visit(b) for b in node.bases]
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        self.class_depth += 1
        node.body = self._mark_body(node.body)
        self.class_depth -= 1
        return node

    def _visit_function(self, node):
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        node.args = self.visit(node.args)
        saved, self.class_depth = self.class_depth, 0  # a method body is a function scope again
        node.body = self._mark_body(node.body)
        self.class_depth = saved
        return node

    visit_FunctionDef = _visit_function

    def visit_AsyncFunctionDef(self, node):
        raise InstrumentationError("async functions are not supported by the runtime")

    # --- expressions -------------------------------------------------------------------------
    def visit_Name(self, node: ast.Name) -> ast.expr:
        if not isinstance(node.ctx, ast.Load) or self.class_depth or node.id in HOOK_NAMES:
            return node
        thunk = _thunk(ast.Name(node.id, ast.Load()))
        return ast.copy_location(_call("_pico_n_", ast.Constant(self._iid()), ast.Constant(node.id), thunk), node)

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.stmt:
        if self.class_depth:  # class bodies keep plain names (see visit_Name)
            return node
        op = ast.Constant(_INPLACE[type(node.op)])
        target, value = node.target, self.visit(node.value)
        if isinstance(target, ast.Name):
            read = self.visit(ast.copy_location(ast.Name(target.id, ast.Load()), target))
            return ast.copy_location(
                ast.Assign([ast.Name(target.id, ast.Store())], _call("_pico_aug_", op, read, value)), node
            )
        if isinstance(target, ast.Attribute):
            call = _call(
                "_pico_aug_attr_",
                ast.Constant(self._iid()),
                self.visit(target.value),
                ast.Constant(target.attr),
                op,
                _thunk(value),
            )
        else:
            key = target.slice
            if isinstance(key, ast.Slice):
                key = _call(
                    "slice", *[k if k is not None else ast.Constant(None) for k in (key.lower, key.upper, key.step)]
                )
            call = _call("_pico_aug_item_", self.visit(target.value), self.visit(key), op, _thunk(value))
        return ast.copy_location(ast.Expr(call), node)

    def visit_Attribute(self, node: ast.Attribute) -> ast.expr:
        node.value = self.visit(node.value)
        if not isinstance(node.ctx, ast.Load):
            return node
        return ast.copy_location(
            _call("_pico_a_", ast.Constant(self._iid()), node.value, ast.Constant(node.attr)), node
        )

    # --- imports -----------------------------------------------------------------------------
    def visit_Import(self, node: ast.Import) -> list[ast.stmt]:
        out = []
        for alias in node.names:
            bound = alias.asname or alias.name.split(".")[0]
            call = _call(
                "_pico_import_",
                ast.Constant(self._iid()),
                ast.Constant(alias.name),
                ast.Constant(alias.asname is not None),
            )
            out.append(ast.copy_location(ast.Assign([ast.Name(bound, ast.Store())], call), node))
        return out

    def visit_ImportFrom(self, node: ast.ImportFrom) -> list[ast.stmt] | ast.ImportFrom:
        if any(alias.name == "*" for alias in node.names):
            return node
        out = []
        for alias in node.names:
            call = _call(
                "_pico_from_",
                ast.Constant(self._iid()),
                ast.Constant(node.module or ""),
                ast.Constant(alias.name),
                ast.Constant(node.level),
            )
            out.append(ast.copy_location(ast.Assign([ast.Name(alias.asname or alias.name, ast.Store())], call), node))
        return out


def _check_supported(tree: ast.Module) -> None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.AsyncFunctionDef, ast.Await, ast.AsyncFor, ast.AsyncWith)):
            raise InstrumentationError("async code is not supported by the runtime")
        if isinstance(node, ast.Nonlocal):
            raise InstrumentationError("`nonlocal` needs the enclosing function, which a snippet lacks")
        if isinstance(node, ast.Name) and node.id in HOOK_NAMES:
            raise InstrumentationError(f"the snippet uses the reserved name {node.id}")


def parse_snippet(code: str) -> tuple[ast.Module, bool]:
    """Parse module-level code, or a function body (with return/yield) wrapped in WRAPPER."""
    try:
        compile(code, "<snippet>", "exec")  # ast.parse alone accepts a bare `return`; compile does not
        return ast.parse(code), False
    except SyntaxError as err:
        body = "\n".join("    " + line for line in code.splitlines()) or "    pass"
        try:
            return ast.parse(f"def {WRAPPER}():\n{body}\n"), True
        except SyntaxError:
            raise InstrumentationError(f"snippet does not parse: {err.msg} (line {err.lineno})") from err


def instrument(code: str) -> Instrumented:
    tree, wrapped = parse_snippet(code)
    _check_supported(tree)
    rewriter = _Rewriter()
    if wrapped:
        func = tree.body[0]
        func.body = rewriter._mark_body(func.body)
        line_offset = -1  # the wrapper's `def` line was prepended
        tree.body.append(ast.Assign([ast.Name("_pico_result_", ast.Store())], _call(WRAPPER)))
    else:
        tree.body = rewriter._mark_body(tree.body)
        line_offset = 0
    ast.fix_missing_locations(tree)
    lines = {iid: line + line_offset for iid, line in rewriter.marker_lines.items()}
    source = ast.unparse(tree)
    return Instrumented(source, len(lines), lines, wrapped, _line_markers(source))


def _line_markers(source: str) -> dict[int, int]:
    """Each line of the instrumented source -> the marker of the innermost statement covering it
    (a marker `_pico_l_(k)` directly precedes its statement in every body)."""
    mapping: dict[int, int] = {}
    for node in ast.walk(ast.parse(source)):  # breadth first: outer statements before inner ones
        for field in ("body", "orelse", "finalbody"):
            block = getattr(node, field, None)
            if not isinstance(block, list):
                continue
            for before, stmt in zip(block, block[1:]):
                if (
                    isinstance(before, ast.Expr)
                    and isinstance(before.value, ast.Call)
                    and isinstance(before.value.func, ast.Name)
                    and before.value.func.id == "_pico_l_"
                ):
                    for line in range(stmt.lineno, stmt.end_lineno + 1):
                        mapping[line] = before.value.args[0].value
    return mapping
