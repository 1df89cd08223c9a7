"""Predictors of values for undefined names, attributes and imports.

Keys are `name#x`, `attr#x` or `import#module`. A prediction is Python code evaluated inside the
sandbox (an expression, or statements assigning `value`), as SelfPiCo's "value as code".

- `AsIsPredictor`: predicts nothing; the snippet runs as it is and stops at the first unknown name.
- `NaivePredictor`: every unknown is an empty object (LExecutor's non-learned "naive" baseline).
- `RuleBasedPredictor`: LExecutor's abstract value classes (@int_pos, @str_nonempty, @list_nonempty,
  @callable, ...) guessed from how the snippet uses the name, then from the name itself.
- `LLMPredictor`: SelfPiCo's few-shot prompt; the failing value and its error are fed back on retry.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

# LExecutor's abstract value classes, as the concrete values the runtime injects.
VALUE_CLASSES = {
    "none": "None",
    "bool": "True",
    "int_pos": "1",
    "float": "1.0",
    "str_nonempty": "'a'",
    "list_nonempty": "[1]",
    "dict_nonempty": "{'a': 1}",
    "callable": "lambda *args, **kwargs: None",
    "object": "types.SimpleNamespace()",
}
_FAKE_MODULE = "value = types.ModuleType({name!r})\nvalue._pico_fake_ = True"

_STR_METHODS = {"split", "strip", "lower", "upper", "startswith", "endswith", "replace", "join", "format",
                "encode", "find", "rstrip", "lstrip", "splitlines", "title", "isdigit", "count"}
_LIST_METHODS = {"append", "extend", "pop", "sort", "insert", "remove", "index", "reverse"}
_DICT_METHODS = {"items", "keys", "values", "get", "update", "setdefault"}
_NAME_RULES = [  # (regex on the name, value class): LExecutor-style naming conventions
    (r"^(is|has|should|can|use|enable|allow)_|^(flag|ok|done|verbose|debug)$", "bool"),
    (r"^(n|i|j|k|num|count|size|idx|index|length|width|height|total|limit|depth|level|port|year|age|"
     r"initial|start|stop|step|offset|retries|attempts|timeout)$"
     r"|^(n|num|max|min)_|_(count|size|idx|index|id|len|num|limit|attempts)$", "int_pos"),
    (r"^[xyz]\d*$|^[xyz]_", "float"),
    (r"(rate|ratio|prob|alpha|beta|lr|score|weight|temperature|threshold|eps|mean|std|price|amount)$", "float"),
    (r"^(name|path|text|msg|message|s|line|prefix|suffix|url|key|label|title|word|sep|filename|fmt|"
     r"string|content|char|token|query|email|host|pattern|regex)$|_(name|path|str|text|dir|file|url|key)$",
     "str_nonempty"),
    (r"^(items|values|rows|lines|words|data|results|records|elements|lst|list|arr|array|seq|nums|numbers)$"
     r"|_(list|items|rows|ids)$|[^s]s$", "list_nonempty"),
    (r"^(d|dict|mapping|config|cfg|kwargs|params|options|opts|headers|counts|cache|lookup|settings)$"
     r"|_(dict|map|by_\w+)$", "dict_nonempty"),
    (r"^(f|fn|func|callback|handler|hook|cb|factory)$|_(fn|func|callback)$", "callable"),
]


@dataclass
class PredictionRequest:
    key: str  # name#x | attr#x | import#m
    snippet: str  # the original code
    line: str  # the source line that needed the value
    attempts: list[tuple[str, str]] = field(default_factory=list)  # (earlier value code, its error)

    @property
    def kind(self) -> str:
        return self.key.split("#", 1)[0]

    @property
    def name(self) -> str:
        return self.key.split("#", 1)[1]


class Predictor:
    name = "predictor"
    uses_feedback = False  # whether a failing value is re-predicted with its error

    def predict(self, request: PredictionRequest) -> str | None:
        raise NotImplementedError


class AsIsPredictor(Predictor):
    name = "as_is"

    def predict(self, request: PredictionRequest) -> str | None:
        return None


class NaivePredictor(Predictor):
    name = "naive"

    def predict(self, request: PredictionRequest) -> str | None:
        if request.kind == "import":
            return _FAKE_MODULE.format(name=request.name)
        return VALUE_CLASSES["object"]


def _usage_class(snippet: str, kind: str, name: str) -> str | None:
    """The value class that the snippet's own use of `name` implies, if any."""
    try:
        tree = ast.parse(snippet)
    except SyntaxError:
        tree = ast.parse("def _f():\n" + "\n".join("    " + line for line in snippet.splitlines()))

    def refers(node: ast.AST) -> bool:
        if kind == "name":
            return isinstance(node, ast.Name) and node.id == name
        return isinstance(node, ast.Attribute) and node.attr == name

    votes: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and refers(node.func):
            votes.append("callable")
        elif isinstance(node, ast.Attribute) and refers(node.value):
            votes.append("str_nonempty" if node.attr in _STR_METHODS else "list_nonempty" if node.attr in _LIST_METHODS
                         else "dict_nonempty" if node.attr in _DICT_METHODS else "object")
        elif isinstance(node, ast.Subscript) and refers(node.value):
            key = node.slice
            votes.append("dict_nonempty" if isinstance(key, ast.Constant) and isinstance(key.value, str) else "list_nonempty")
        elif isinstance(node, (ast.For, ast.comprehension)) and refers(node.iter):
            votes.append("list_nonempty")
        elif isinstance(node, ast.BinOp) and (refers(node.left) or refers(node.right)):
            other = node.right if refers(node.left) else node.left
            if isinstance(other, ast.Constant) and isinstance(other.value, str):
                votes.append("str_nonempty")
            elif isinstance(other, ast.Constant) and isinstance(other.value, float):
                votes.append("float")
            else:
                votes.append("int_pos")
        elif isinstance(node, ast.Compare) and any(refers(n) for n in [node.left, *node.comparators]):
            others = [n for n in [node.left, *node.comparators] if not refers(n)]
            if any(isinstance(o, ast.Constant) and isinstance(o.value, (int, float)) for o in others):
                votes.append("int_pos")
        elif isinstance(node, ast.Dict) and any(k is None and refers(v) for k, v in zip(node.keys, node.values)):
            votes.append("dict_nonempty")  # {**name}
        elif isinstance(node, (ast.If, ast.While)) and refers(node.test):
            votes.append("bool")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and any(refers(a) for a in node.args):
            builtin = {"len": "list_nonempty", "sum": "list_nonempty", "sorted": "list_nonempty",
                       "enumerate": "list_nonempty", "zip": "list_nonempty", "int": "str_nonempty",
                       "float": "str_nonempty", "open": "str_nonempty", "range": "int_pos", "abs": "int_pos",
                       "round": "float", "max": "list_nonempty", "min": "list_nonempty"}.get(node.func.id)
            if builtin:
                votes.append(builtin)
    if not votes:
        return None
    # The strongest evidence first: what a value is called with/as beats generic object use.
    for preferred in ("callable", "str_nonempty", "list_nonempty", "dict_nonempty", "float", "int_pos", "bool"):
        if preferred in votes:
            return preferred
    return votes[0]


def _name_class(name: str) -> str | None:
    lowered = name.lower()
    for pattern, value_class in _NAME_RULES:
        if re.search(pattern, lowered):
            return value_class
    return None


class RuleBasedPredictor(Predictor):
    name = "rule_based"

    def predict(self, request: PredictionRequest) -> str | None:
        if request.kind == "import":
            return _FAKE_MODULE.format(name=request.name)
        value_class = (_usage_class(request.snippet, request.kind, request.name)
                       or _name_class(request.name) or "object")
        return VALUE_CLASSES[value_class]


# The prompt file: instructions, then few-shot (request, answer) pairs, separated by `---` lines.
# Small chat models imitate short answers far better as alternating turns than inside one message.
_PROMPT_PARTS = [part.strip("\n") for part in
                 (Path(__file__).parent / "prompts" / "predict_value.md").read_text().split("\n---\n")]
_CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n?(.*?)```", re.DOTALL)
_INLINE_CODE = re.compile(r"`([^`\n]+)`")


def _compiles(code: str) -> bool:
    try:
        compile(code, "<value>", "eval")
        return True
    except SyntaxError:
        try:
            compile(code, "<value>", "exec")
            return "value" in code
        except SyntaxError:
            return False


def parse_value_code(text: str) -> str:
    """The value code in an LLM reply: the first fenced block, inline code span or line that is
    valid Python (an expression, or statements assigning `value`)."""
    candidates = [m.group(1) for m in _CODE_BLOCK.finditer(text)]
    candidates += [ln for ln in text.splitlines() if ln.strip()]
    candidates += [m.group(1) for m in _INLINE_CODE.finditer(text)]
    for raw in candidates:
        code = raw.strip()
        for prefix in ("value =", "Value:", "value:"):
            if code.startswith(prefix) and "\n" not in code:
                code = code[len(prefix):].strip()
        if code and _compiles(code):
            return code
        # Small models often drop a string's opening quote ('The quick fox"'): restore it.
        if code[-1:] in "'\"" and code.count(code[-1]) % 2 == 1 and _compiles(code[-1] + code):
            return code[-1] + code
    raise ValueError(f"the reply holds no Python value: {text[:80]!r}")


class LLMPredictor(Predictor):
    """SelfPiCo: few-shot prompt, value as code, the error fed back on each retry."""

    name = "llm"
    uses_feedback = True

    def __init__(self, llm, max_tokens: int = 96, fallback: Predictor | None = None):
        self.llm = llm
        self.max_tokens = max_tokens
        self.fallback = fallback  # used when the reply holds no Python value at all (counted)
        self.unparseable_replies = 0

    def build_messages(self, request: PredictionRequest) -> list[dict[str, str]]:
        what = {"name": f"the variable `{request.name}`", "attr": f"the attribute `.{request.name}`",
                "import": f"the module `{request.name}` (it is not installed)"}[request.kind]
        messages = [{"role": "system", "content": _PROMPT_PARTS[0]}]
        for question, answer in zip(_PROMPT_PARTS[1::2], _PROMPT_PARTS[2::2]):
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content":
                         f"Code:\n{request.snippet.strip()}\nLine: `{request.line.strip()}`\nValue for {what}:"})
        for code, error in request.attempts:  # SelfPiCo's feedback: the failed answer and its error
            messages += [{"role": "assistant", "content": code},
                         {"role": "user", "content": f"That value failed with: {error}\nGive a different value."}]
        return messages

    def predict(self, request: PredictionRequest) -> str | None:
        reply = self.llm.chat(self.build_messages(request), max_tokens=self.max_tokens, temperature=0.0)
        try:
            return parse_value_code(reply.text)
        except ValueError:
            self.unparseable_replies += 1
            return self.fallback.predict(request) if self.fallback else None
