"""Predictors of values for undefined names, attributes and imports.

Keys are `name#x`, `attr#x` or `import#module`. A prediction is Python code evaluated inside the
sandbox (an expression, or statements assigning `value`), as SelfPiCo's "value as code".

- `AsIsPredictor`: predicts nothing; the snippet runs as it is and stops at the first unknown name.
- `NaivePredictor`: every unknown is an empty object (LExecutor's non-learned "naive" baseline).
- `RuleBasedPredictor`: LExecutor's value classes guessed from how the snippet uses the name (with
  the keys, attributes and element shapes those uses need: `analysis.py`), then from the name.
- `LLMPredictor`: SelfPiCo's prompt (few-shot, or zero-shot for a tuned model) with the usage as a
  hint; replies that are no value (an example's answer copied, a bare module name, a line of code,
  a literal of the wrong kind) are refused on the host and asked again; the execution feedback of
  earlier values (exception, line, usage) is in the prompt on every retry.
"""

from __future__ import annotations

import ast
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from components.selfpico.analysis import build_value, shape_for

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
CANDIDATES = 3  # LLM-guided: values asked per new name by default; the one that runs furthest is kept
_FAKE_MODULE = "value = types.ModuleType({name!r})\nvalue._pico_fake_ = True"


@dataclass
class PredictionRequest:
    key: str  # name#x | attr#x | import#m
    snippet: str  # the original code
    line: str  # the source line that needed the value
    attempts: list[tuple[str, str]] = field(default_factory=list)  # (earlier value code, its error)
    usage: str = ""  # what the snippet does with the value (keys, attributes, iteration...), in words

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


class RuleBasedPredictor(Predictor):
    """LExecutor-style: the value the snippet's own uses imply (keys it reads, attributes, element
    shapes, calls), else the name's convention (`price` -> float, `rows` -> list)."""

    name = "rule_based"

    def predict(self, request: PredictionRequest) -> str | None:
        if request.kind == "import":
            return _FAKE_MODULE.format(name=request.name)
        return build_value(shape_for(request.snippet, request.kind, request.name), request.name)


# The prompt file: instructions, then few-shot (request, answer) pairs, separated by `---` lines.
# Small chat models imitate short answers far better as alternating turns than inside one message.
_PROMPT_PARTS = [
    part.strip("\n") for part in (Path(__file__).parent / "prompts" / "predict_value.md").read_text().split("\n---\n")
]
_CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n?(.*?)```", re.DOTALL)
_INLINE_CODE = re.compile(r"`([^`\n]+)`")


def _compiles(code: str) -> bool:
    with warnings.catch_warnings():  # a reply like `[1][0, 1]` compiles with a SyntaxWarning: not ours to print
        warnings.simplefilter("ignore", SyntaxWarning)
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
                code = code[len(prefix) :].strip()
        if code and _compiles(code):
            return code
        # Small models often drop a string's opening quote ('The quick fox"'): restore it.
        if code[-1:] in "'\"" and code.count(code[-1]) % 2 == 1 and _compiles(code[-1] + code):
            return code[-1] + code
    raise ValueError(f"the reply holds no Python value: {text[:80]!r}")


# The type an exception says the code could not use: "must be str, not list", "'int' object is not
# subscriptable", "unhashable type: 'dict'", "object of type 'int' has no len()".
_REJECTED_TYPE = re.compile(
    r"\bnot (?:an? )?'?([A-Za-z_][\w.]*)'?\s*$|^'([A-Za-z_][\w.]*)' object (?:is not|has no|cannot|does not)"
    r"|unhashable type: '([\w.]+)'|\bof type '([\w.]+)'"
)


def rejected_type(outcome: str) -> str | None:
    """The type the exception in an outcome ("TypeError: <message> (line `...`)") says the code could
    not use, as Python names it (`list`, `types.SimpleNamespace`); None when it names none."""
    message = outcome.split(" (line `", 1)[0]
    message = message.split(": ", 1)[1] if re.match(r"^[A-Z]\w*(Error|Exception): ", message) else message
    match = _REJECTED_TYPE.search(message.strip())
    if match is None:
        return None
    name = next(g for g in match.groups() if g)
    return name.rsplit(".", 1)[-1]


def value_type(code: str) -> str | None:
    """The type name of the value a reply's code makes, where its syntax alone tells (a literal, a
    lambda, a `types.SimpleNamespace(...)` call); None otherwise."""
    try:
        node = ast.parse(code.strip(), mode="eval").body
    except SyntaxError:
        return None
    if isinstance(node, ast.Lambda):
        return "function"
    if isinstance(node, ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        return name if name in ("SimpleNamespace", "dict", "list", "set", "tuple", "str", "int", "float") else None
    try:
        return type(ast.literal_eval(node)).__name__
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def feedback_problem(code: str, request: PredictionRequest) -> str | None:
    """Why a reply repeats what the execution feedback already ruled out: a value tried before, or
    a value of the type an earlier value's exception rejected (that value being of that type)."""
    kind = value_type(code)
    for earlier, outcome in request.attempts:
        if code.strip() == earlier.strip():
            return "that value was tried already: give a different one"
        rejected = rejected_type(outcome)
        if kind is not None and rejected == kind and value_type(earlier) == kind:
            return f"the code cannot use a {kind} there ({outcome.split(' (line `', 1)[0]}): give another type"
    return None


def reply_problem(code: str, request: PredictionRequest, few_shot_answers=()) -> str | None:
    """Why a parsed reply is no value for this request (checked on the host, before any run)."""
    if code.strip() in few_shot_answers and code.strip() not in request.snippet:
        return "that is the example's value, not one for this code"
    problem = feedback_problem(code, request)
    if problem is not None:
        return problem
    try:
        node = ast.parse(code, mode="eval").body
    except SyntaxError:
        return None  # statements assigning `value`: judged by running them
    if isinstance(node, ast.Name) and node.id not in ("None", "True", "False"):
        return f"`{node.id}` is a name, not a value: write a literal, a lambda or a constructor call"
    try:
        literal = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    shape = shape_for(request.snippet, request.kind, request.name) if request.kind != "import" else None
    if shape is None:
        return None
    if shape.returns is not None or "callable" in shape.votes:
        return "the code calls it: write a lambda or a function value"
    if shape.keys and not isinstance(literal, dict):
        return "the code reads keys " + ", ".join(repr(k) for k in shape.keys if k != "*") + " from it: write a dict"
    if (
        shape.elem is not None
        and isinstance(literal, (int, float, bool))
        or (shape.attrs and not shape.methods and isinstance(literal, (int, float, bool, str)))
    ):
        return "the code iterates it or reads its attributes: a number cannot do that"
    return None


class LLMPredictor(Predictor):
    """SelfPiCo: value as code, the usage as a hint, execution feedback on every retry; `few_shot`
    off for a model tuned for the task (it needs no examples and then cannot copy them)."""

    name = "llm"
    uses_feedback = True

    def __init__(
        self,
        llm,
        max_tokens: int = 96,
        fallback: Predictor | None = None,
        few_shot: bool = True,
        host_checks: int = 2,
        candidates: int = CANDIDATES,
        retry_temperature: float = 0.8,
    ):
        self.llm = llm
        self.max_tokens = max_tokens
        self.fallback = fallback  # the value when replies hold none, and after the retries (executor)
        self.few_shot = few_shot
        self.host_checks = host_checks  # replies refused on the host (no value) re-asked at most this often
        # values asked per new name (the later ones with what the earlier did); the executor runs them
        # all, with the fallback's, and keeps the one that runs furthest
        self.candidates = candidates
        # a reply refused on the host is asked again sampled at this temperature (0: greedy again): a
        # greedy model asked nearly the same question tends to give the refused value once more
        self.retry_temperature = retry_temperature
        self.unparseable_replies = 0
        self.refused_replies = 0
        self.fallback_values = 0
        self._answers = {a.strip() for a in _PROMPT_PARTS[2::2]}

    def build_messages(self, request: PredictionRequest) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": _PROMPT_PARTS[0]}]
        if self.few_shot:
            for question, answer in zip(_PROMPT_PARTS[1::2], _PROMPT_PARTS[2::2]):
                messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": request_text(request)})
        for code, outcome in request.attempts:  # SelfPiCo's feedback: the earlier answer and what happened
            messages += [{"role": "assistant", "content": code}, {"role": "user", "content": feedback_turn(outcome)}]
        return messages

    def predict(self, request: PredictionRequest) -> str | None:
        if request.kind == "import":  # a module stub: the LLM predicts the module's attributes instead
            return _FAKE_MODULE.format(name=request.name)
        self.last_from_fallback = False  # whether the value returned is the fallback's (no reply held one)
        attempts = list(request.attempts)
        for check in range(self.host_checks + 1):
            asked = PredictionRequest(request.key, request.snippet, request.line, attempts, request.usage)
            temperature = self.retry_temperature if check else 0.0
            reply = self.llm.chat(self.build_messages(asked), max_tokens=self.max_tokens, temperature=temperature)
            try:
                code = parse_value_code(reply.text)
            except ValueError:
                self.unparseable_replies += 1
                attempts.append((reply.text.strip()[:200] or "(nothing)", "the reply holds no Python value"))
                continue
            problem = reply_problem(code, asked, self._answers)
            if problem is None:
                return code
            self.refused_replies += 1
            attempts.append((code, problem))
        if self.fallback is None:
            return None
        self.fallback_values += 1
        self.last_from_fallback = True
        return self.fallback.predict(request)


_RAN = "it ran "  # an outcome that is no failure: how far the value's run got (`ran_feedback`)


def ran_feedback(lines: int, total: int, first_unrun: str = "") -> str:
    """The outcome of a value that did not fail, in words: how many lines ran, and the first that never did."""
    missed = f"; line `{first_unrun.strip()}` never ran" if first_unrun.strip() else ""
    return f"{_RAN}{lines} of the {total} lines{missed}"


def feedback_turn(outcome: str) -> str:
    """The user turn after an earlier value (shared by the predictor and the tuning data): its
    exception and line, or how far its run got (`ran_feedback`)."""
    if outcome.startswith(_RAN):
        return f"With that value {outcome}.\nGive a different value that runs more of the code."
    return f"That value failed: {outcome}\nGive a different value."


def request_text(request: PredictionRequest) -> str:
    """The user turn asking for one value (shared by the predictor and the tuning data)."""
    what = {
        "name": f"the variable `{request.name}`",
        "attr": f"the attribute `.{request.name}`",
        "import": f"the module `{request.name}` (it is not installed)",
    }[request.kind]
    usage = f"\nThe code uses it: {request.usage}" if request.usage else ""
    return f"Code:\n{request.snippet.strip()}\nLine: `{request.line.strip()}`{usage}\nValue for {what}:"
