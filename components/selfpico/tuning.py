"""Training data for tuning a small model to predict values: search with execution feedback.

SelfPiCo fine-tunes Code Llama on value predictions; here SmolLM2-135M is tuned on data this
project generates:
- snippets: function bodies from installed packages (`package_function_snippets`), from modules
  none of the benchmark's sets use, and generated partial-code snippets (`synthetic.py`: records,
  JSON, objects, method bodies, text files); never a snippet equal to a benchmark snippet;
- targets: for each value a run asks for, candidate values (the usage-shaped rule-based one, and
  alternatives of other kinds: numbers, digit and date strings, the path of a file the value
  writes, lists, dicts with the keys read, objects with the attributes read, callables) are each
  executed in the sandbox, and the run is carried on for a few more values (rule-based ones); the
  candidate whose runs execute the most lines is the target (then: one that does not fail; ties:
  the earlier candidate);
- chats: the LLM-guided predictor's own zero-shot prompt -> the target; and, for the candidates
  that failed, the prompt with that failure as feedback (the exception and the line) -> the target
  (the self-guided loop).
The fine-tuning loop and the save/load of tuned layers are `components.compiler.tuning.tune` and
`components.lm.smollm2.save_tuned`.
"""

from __future__ import annotations

import ast
import json
import time
import types
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from components.checks import ConfigError, at_least
from components.selfpico.analysis import _STR_METHODS, build_value, describe, parse_any, shape_for, value_class
from components.selfpico.executor import Snippet, first_unrun_line, run_once
from components.selfpico.instrument import InstrumentationError, instrument
from components.selfpico.predictors import LLMPredictor, PredictionRequest, RuleBasedPredictor, ran_feedback
from components.selfpico.snippets import package_function_snippets
from components.selfpico.synthetic import synthetic_snippets

# Modules the benchmark's development set samples from: never tuned on.
BENCHMARK_MODULES = ("textwrap", "difflib", "shlex", "fractions", "statistics", "html", "calendar", "colorsys")


@dataclass
class ValueDataConfig:
    """Which snippets the value search runs on, and how hard it searches."""

    modules: list[str] = field(
        default_factory=lambda: [
            "email.utils",
            "urllib.parse",
            "configparser",
            "csv",
            "string",
            "pprint",
            "ipaddress",
            "gettext",
            "mimetypes",
            "http.cookies",
            "argparse",
            "tokenize",
            "optparse",
        ]
    )  # package modules to take function bodies from: never the benchmark's (textwrap, difflib, ...)
    count: int = 40  # function bodies sampled (seeded) from those modules' source
    synthetic: int = 144  # generated partial-code snippets (records, JSON, objects, method bodies, files)
    max_lines: int = 20  # longer bodies make long prompts for a 135M model
    per_key: int = 8  # candidate values executed per requested value; the most lines executed wins
    rollout: int = 2  # further values (rule-based) each candidate's run is carried on for
    seed: int = 0

    def __post_init__(self) -> None:
        overlap = sorted(set(self.modules) & set(BENCHMARK_MODULES))
        if overlap:
            raise ConfigError(
                "data.modules",
                self.modules,
                f"{overlap} are sampled by the benchmark's development set: never tune on them",
            )
        if not self.modules and not self.synthetic:
            raise ConfigError("data.modules", self.modules, "empty, and data.synthetic=0: nothing to tune on")
        at_least("data.count", self.count, 0)
        at_least("data.synthetic", self.synthetic, 0)
        at_least("data.per_key", self.per_key, 1)
        at_least("data.rollout", self.rollout, 0)


@dataclass
class SearchedValue:
    key: str
    request: PredictionRequest
    target: str
    lines: int
    failures: list[tuple[str, str]] = field(default_factory=list)  # (worse candidate, what happened): feedback turns


def candidates(request: PredictionRequest, limit: int = 6) -> list[str]:
    """The rule-based value first, then values of other kinds shaped by the same usage."""
    if request.kind == "import":
        return [RuleBasedPredictor().predict(request)]
    shape = shape_for(request.snippet, request.kind, request.name)
    keys = [k for k in shape.keys if k != "*"]
    attrs = [a for a in shape.attrs if a.isidentifier() and not a.startswith("__")]
    element = build_value(shape.elem, request.name) if shape.elem is not None else "'item'"
    values = [build_value(shape, request.name)]
    values.append(varied(values[0]))
    texts = _literal_texts(request.snippet)
    is_text = value_class(shape, request.name) == "str"
    if is_text or shape.passed_to:
        # text of the kinds a library call may need first: a date, the path of a file that exists
        values += ["'2024-03-15'", file_value(texts)]
    if is_text or shape.elem is not None and shape.elem.methods & _STR_METHODS:
        values += texts
    values += _json_texts(request)
    if keys:
        values.append("{" + ", ".join(f"{k!r}: {build_value(shape.keys[k], k)}" for k in keys) + "}")
    if attrs:
        values.append(
            "types.SimpleNamespace(" + ", ".join(f"{a}={build_value(shape.attrs[a], a)}" for a in attrs) + ")"
        )
    values += [
        f"[{element}, {varied(element)}]",
        "'42'",
        "3",
        "2.5",
        "'sample text'",
        "'2024-03-15'",
        "lambda *args, **kwargs: 1",
        "{'key': 'value'}",
        "True",
        "None",
        "[]",
    ]
    unique: list[str] = []
    for value in values:
        if value not in unique:
            unique.append(value)
    return unique[:limit]


FILE_NAME = "input.txt"  # written in the run's throwaway folder by the value itself


def file_value(texts: Sequence[str] = ()) -> str:
    """A value that is the path of a small text file it writes first (words on lines, and the
    snippet's own separators when given): what `open(x)` and the like need."""
    content = "alpha beta gamma\nbeta gamma delta\n" + (ast.literal_eval(texts[-1]) + "\n" if texts else "")
    return f"__import__('pathlib').Path({FILE_NAME!r}).write_text({content!r}) and {FILE_NAME!r}"


def _literal_texts(code: str) -> list[str]:
    """Text made of the snippet's own short string constants (separators, prefixes, markers: what
    its string methods and `in` tests look for) between words: on one line, and on lines of their own."""
    found = []
    for node in ast.walk(parse_any(code)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and 0 < len(node.value) <= 8:
            text = node.value
            if not text.isalnum() and not text.isspace() and text not in found:
                found.append(text)
    if not found:
        return []
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]
    seps = found[:5]
    one_line = words[0] + "".join(sep + words[i + 1] for i, sep in enumerate(seps))
    # per constant: a line that starts with it, and one that holds it between two words
    per_line = "\n".join(f"{sep}{words[i]}\n{words[i]}{sep}{words[i + 1]}" for i, sep in enumerate(seps))
    return [repr(one_line), repr(per_line)]


class _Vary(ast.NodeTransformer):
    """Other numbers, words and truth values in the same structure (dates and digit strings keep
    their form): a second element that takes the other side of the code's comparisons."""

    def visit_Constant(self, node: ast.Constant) -> ast.Constant:
        value = node.value
        if isinstance(value, bool):
            return ast.Constant(not value)
        if isinstance(value, int):
            return ast.Constant(value * 7 + 3)
        if isinstance(value, float):
            return ast.Constant(round(value * 9.5 + 0.25, 2))
        if isinstance(value, str) and value.isdigit():
            return ast.Constant(str(int(value) * 7 + 3))
        if isinstance(value, str) and value.isidentifier():
            return ast.Constant(value + "_b")
        return node

    def visit_Dict(self, node: ast.Dict) -> ast.Dict:
        node.values = [self.visit(v) for v in node.values]  # the keys are what the code reads: they stay
        return node

    def visit_keyword(self, node: ast.keyword) -> ast.keyword:
        node.value = self.visit(node.value)
        return node


def varied(code: str) -> str:
    """`code` (a value built by `build_value`) with its constants changed, not its keys or shape."""
    try:
        return ast.unparse(_Vary().visit(ast.parse(code, mode="eval")))
    except SyntaxError:
        return code


def _json_texts(request: PredictionRequest) -> list[str]:
    """For `data = json.loads(x)`: x as JSON text of the shape the code reads from `data`."""
    texts = []
    for node in ast.walk(parse_any(request.snippet)):
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        call = node.value
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, (ast.Attribute, ast.Name))
            and (call.func.attr if isinstance(call.func, ast.Attribute) else call.func.id) == "loads"
            and call.args
            and isinstance(call.args[0], ast.Name)
            and call.args[0].id == request.name
        ):
            code = build_value(shape_for(request.snippet, "name", node.targets[0].id), node.targets[0].id)
            try:
                value = eval(code, {"__builtins__": {}, "types": types})  # noqa: S307 - code built by build_value
                texts.append(repr(json.dumps(value, default=lambda _: "text")))
            except Exception:  # noqa: BLE001, S112 - a shape JSON cannot hold: no such candidate
                continue
    return texts


def search_values(
    snippet: Snippet, sandbox, max_keys: int = 8, per_key: int = 6, rollout: int = 2
) -> list[SearchedValue]:
    """Greedy search: at each value a run asks for, keep the candidate whose run (carried on for
    `rollout` more rule-based values) executes the most lines."""
    try:
        instrumented = instrument(snippet.code)
    except InstrumentationError:
        return []
    lines = snippet.code.splitlines()
    n_lines = len(set(instrumented.marker_lines.values()))
    rule = RuleBasedPredictor()

    def executed_lines(trace) -> set[int]:
        return {instrumented.marker_lines[m] for m in trace["executed"] if m in instrumented.marker_lines}

    def line_text(marker) -> str:
        line = instrumented.marker_lines.get(marker)
        return lines[line - 1] if line and 0 < line <= len(lines) else ""

    def request_for(key: str, marker) -> PredictionRequest:
        kind, name = key.split("#", 1)
        usage = describe(shape_for(snippet.code, kind, name)) if kind != "import" else ""
        return PredictionRequest(key, snippet.code, line_text(marker), [], usage)

    def reach(values: dict[str, str]) -> tuple[int, bool, str]:
        """Lines the run executes, carried on with rule-based values; whether its first run failed; what
        happened, worded as the executor's feedback (the exception and line, or how far it ran)."""
        result, _ = run_once(instrumented, values, sandbox)
        failed = result["status"] in ("error", "bad_value", "no_trace")
        message = ""
        if failed:  # the exception, the line (the traceback's, for an error)
            marker = result.get("marker")
            if result["status"] == "error":
                marker = instrumented.line_markers.get(result.get("snippet_frame_line"), marker)
            error = f"{result['error_type']}: {result.get('error')}" if "error_type" in result else result.get("error")
            message = f"{error or result.get('reason')} (line `{line_text(marker).strip()}`)"
        best, carried = executed_lines(result), dict(values)
        for _ in range(rollout):
            key = result.get("key")
            if result["status"] != "missing" or not isinstance(key, str) or key in carried:
                break
            carried[key] = rule.predict(request_for(key, result.get("marker")))
            result, _ = run_once(instrumented, carried, sandbox)
            best = max(best, executed_lines(result), key=len)
        if not failed:
            message = ran_feedback(len(best), n_lines, first_unrun_line(instrumented, lines, best))
        return len(best), failed, message

    values: dict[str, str] = {}
    found: list[SearchedValue] = []
    for _ in range(max_keys):
        trace, _ = run_once(instrumented, values, sandbox)
        key = trace.get("key")
        if trace["status"] != "missing" or not isinstance(key, str) or key in values:
            break
        request = request_for(key, trace.get("marker"))
        scored = []
        for rank, value in enumerate(candidates(request, per_key)):
            reached, failed, message = reach({**values, key: value})
            scored.append((reached, not failed, -rank, value, message))
        best = max(scored)
        worse = [(value, message, ok) for reached, ok, _, value, message in scored if reached < best[0]]
        # the feedback turns: up to two candidates that failed, and one that ran but not as far
        failures = [(v, m) for v, m, ok in worse if not ok][:2] + [(v, m) for v, m, ok in worse if ok][:1]
        found.append(SearchedValue(key, request, best[3], best[0], failures))
        values[key] = best[3]
    return found


def value_chats(found: list[SearchedValue]) -> list[list[dict[str, str]]]:
    """Each searched value as the LLM-guided predictor's zero-shot chat; for each worse candidate,
    also the feedback turn that leads from it (its exception, or how far it ran) to the target; and
    with several, all of them in turn, as the executor asks after several values were run."""
    prompt = LLMPredictor(llm=None, few_shot=False)
    chats = []
    for item in found:
        if item.key.startswith("import#"):
            continue  # modules are stubbed by the runtime, not predicted by the model
        turns = [[]] + [[failure] for failure in item.failures]
        if len(item.failures) > 1:
            turns.append(list(item.failures))
        for attempts in turns:
            request = PredictionRequest(
                item.request.key, item.request.snippet, item.request.line, attempts, item.request.usage
            )
            chats.append(prompt.build_messages(request) + [{"role": "assistant", "content": item.target}])
    return chats


@dataclass
class ValueData:
    """What the value search produced: the chats to tune on and where they came from."""

    chats: list[list[dict[str, str]]]
    snippets: int  # snippets searched (package bodies + generated)
    values: int  # values searched
    search_seconds: float
    examples: list[dict] = field(default_factory=list)  # the first searched values, for the run's artifacts

    @property
    def feedback_chats(self) -> int:
        return sum(len(c) > 4 for c in self.chats)

    def provenance(self, spec: ValueDataConfig) -> dict:
        """Where the chats came from, written into the tuned model's tuning.json (with the search's
        settings: the model can be made again from them)."""
        return {
            "data": asdict(spec),
            "modules": list(spec.modules),
            "snippets": self.snippets,
            "values": self.values,
            "chats": len(self.chats),
            "feedback_chats": self.feedback_chats,
        }

    def metrics(self) -> dict[str, float]:
        return {
            "snippets": float(self.snippets),
            "values": float(self.values),
            "chats": float(len(self.chats)),
            "feedback_chats": float(self.feedback_chats),
            "search_minutes": self.search_seconds / 60,
        }


def tuning_snippets(spec: ValueDataConfig, exclude: set[str]) -> list[Snippet]:
    """Package function bodies and generated snippets, minus any whose code is in `exclude` (the
    benchmark's held-out and development snippets)."""
    snippets = package_function_snippets(spec.modules, spec.count, seed=spec.seed, max_lines=spec.max_lines)
    snippets += synthetic_snippets(spec.synthetic, seed=spec.seed)
    return [s for s in snippets if s.code.strip() not in exclude]


def collect_value_data(spec: ValueDataConfig, sandbox, exclude: set[str]) -> ValueData:
    """Search values for every tuning snippet in the sandbox; the chats to tune on."""
    snippets = tuning_snippets(spec, exclude)
    start = time.perf_counter()
    found: list[SearchedValue] = []
    for snippet in snippets:
        found += search_values(snippet, sandbox, per_key=spec.per_key, rollout=spec.rollout)
    examples = [{"key": f.key, "target": f.target, "lines": f.lines, "failures": f.failures} for f in found[:40]]
    return ValueData(value_chats(found), len(snippets), len(found), time.perf_counter() - start, examples)
