"""The calculator tool: arithmetic expressions evaluated on the AST, never with eval().

Allowed: numbers, + - * / // % **, parentheses, and abs/round/min/max/sqrt/sum/mean. Powers are
capped so `9**9**9` is an error, not a hung process.
"""

from __future__ import annotations

import ast
import math
import operator
import re
import statistics

from components.tools.base import Tool, ToolResult

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCS = {
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "sqrt": math.sqrt,
    "sum": lambda *xs: sum(xs),
    "mean": lambda *xs: statistics.fmean(xs),
}
_MAX_EXPONENT = 100
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")


def evaluate(expression: str) -> float | int:
    """Evaluate an arithmetic expression; ValueError names what is not allowed."""
    if not isinstance(expression, str):
        expression = str(expression)
    text = _THOUSANDS.sub("", expression.strip())  # "1,234,567" -> "1234567"
    if not text:
        raise ValueError("empty expression")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as err:
        raise ValueError(f"not an arithmetic expression: {expression!r} ({err.msg})") from None
    return _eval(tree.body, expression)


def _eval(node: ast.AST, source: str):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left, source), _eval(node.right, source)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise ValueError(f"exponent {right} is too large (max {_MAX_EXPONENT})")
        try:
            return _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ValueError(f"division by zero in {source!r}") from None
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand, source))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS and not node.keywords:
        args = [_eval(a, source) for a in node.args]
        if len(args) == 1 and isinstance(args[0], list):
            args = args[0]
        return _FUNCS[node.func.id](*args)
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_eval(e, source) for e in node.elts]
    raise ValueError(f"not allowed in a calculation: {ast.unparse(node)!r} in {source!r}")


def _calculate(expression: str) -> ToolResult:
    value = evaluate(expression)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    shown = f"{value:.6g}" if isinstance(value, float) else str(value)
    return ToolResult(value=value, text=shown)


def calculator_tool(latency_s: float = 0.0) -> Tool:
    return Tool(
        name="calculate",
        description='calculate(expression: str) -> number: evaluates arithmetic such as "($1 + $2) / 2" '
        "(+ - * / ** and abs, round, min, max, sqrt, mean). Use $N for the result of task N.",
        fn=_calculate,
        latency_s=latency_s,
    )
