"""Training data for tuning a small model to predict values: search with execution feedback.

SelfPiCo fine-tunes Code Llama on value predictions; here SmolLM2-135M is tuned on data this
project generates:
- snippets: function bodies from installed packages (`package_function_snippets`), from modules
  none of the benchmark's sets use, and never a body equal to a benchmark snippet;
- targets: for each value a run asks for, candidate values (the usage-shaped rule-based one, and
  alternatives of other kinds: numbers, digit strings, lists, dicts with the keys read, objects with
  the attributes read, callables) are each executed in the sandbox; the candidate that executes the
  most lines is the target (ties: the earlier candidate);
- chats: the LLM-guided predictor's own zero-shot prompt -> the target; and, where an earlier
  candidate failed, the prompt with that failure as feedback -> the target (the self-guided loop).
The fine-tuning loop and the save/load of tuned layers are `components.compiler.tuning.tune` and
`components.lm.smollm2.save_tuned`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from components.selfpico.analysis import build_value, describe, shape_for
from components.selfpico.executor import Snippet, run_once
from components.selfpico.instrument import InstrumentationError, instrument
from components.selfpico.predictors import LLMPredictor, PredictionRequest, RuleBasedPredictor

# Modules the benchmark's development set samples from: never tuned on.
BENCHMARK_MODULES = ("textwrap", "difflib", "shlex", "fractions", "statistics", "html", "calendar", "colorsys")


@dataclass
class SearchedValue:
    key: str
    request: PredictionRequest
    target: str
    lines: int
    failures: list[tuple[str, str]] = field(default_factory=list)  # (candidate, what happened), worse ones


def candidates(request: PredictionRequest, limit: int = 6) -> list[str]:
    """The rule-based value first, then values of other kinds shaped by the same usage."""
    if request.kind == "import":
        return [RuleBasedPredictor().predict(request)]
    shape = shape_for(request.snippet, request.kind, request.name)
    keys = [k for k in shape.keys if k != "*"]
    attrs = [a for a in shape.attrs if a.isidentifier() and not a.startswith("__")]
    element = build_value(shape.elem, request.name) if shape.elem is not None else "'item'"
    values = [build_value(shape, request.name)]
    if keys:
        values.append("{" + ", ".join(f"{k!r}: {build_value(shape.keys[k], k)}" for k in keys) + "}")
    if attrs:
        values.append(
            "types.SimpleNamespace(" + ", ".join(f"{a}={build_value(shape.attrs[a], a)}" for a in attrs) + ")"
        )
    values += [
        f"[{element}, {element}]",
        "'42'",
        "3",
        "2.5",
        "'sample text'",
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


def search_values(snippet: Snippet, sandbox, max_keys: int = 8, per_key: int = 6) -> list[SearchedValue]:
    """Greedy search: at each value a run asks for, keep the candidate executing the most lines."""
    try:
        instrumented = instrument(snippet.code)
    except InstrumentationError:
        return []
    lines = snippet.code.splitlines()

    def executed_lines(trace) -> int:
        return len({instrumented.marker_lines[m] for m in trace["executed"] if m in instrumented.marker_lines})

    def line_text(marker) -> str:
        line = instrumented.marker_lines.get(marker)
        return lines[line - 1] if line and 0 < line <= len(lines) else ""

    values: dict[str, str] = {}
    found: list[SearchedValue] = []
    for _ in range(max_keys):
        trace, _ = run_once(instrumented, values, sandbox)
        key = trace.get("key")
        if trace["status"] != "missing" or not isinstance(key, str) or key in values:
            break
        kind, name = key.split("#", 1)
        usage = describe(shape_for(snippet.code, kind, name)) if kind != "import" else ""
        request = PredictionRequest(key, snippet.code, line_text(trace.get("marker")), [], usage)
        scored = []
        for rank, value in enumerate(candidates(request, per_key)):
            result, _ = run_once(instrumented, {**values, key: value}, sandbox)
            failed = result["status"] in ("error", "bad_value", "no_trace")
            message = (
                (
                    f"{result.get('error_type', 'BadValue')}: {result.get('error')}"
                    f" (line `{line_text(result.get('marker')).strip()}`)"
                )
                if failed
                else ""
            )
            scored.append((executed_lines(result), not failed, -rank, value, message))
        best = max(scored)
        failures = [(value, message) for _, _, _, value, message in scored if message and value != best[3]]
        found.append(SearchedValue(key, request, best[3], best[0], failures[:1]))
        values[key] = best[3]
    return found


def value_chats(found: list[SearchedValue]) -> list[list[dict[str, str]]]:
    """Each searched value as the LLM-guided predictor's zero-shot chat; with a failed candidate,
    also the feedback turn that leads from it to the target."""
    prompt = LLMPredictor(llm=None, few_shot=False)
    chats = []
    for item in found:
        if item.key.startswith("import#"):
            continue  # modules are stubbed by the runtime, not predicted by the model
        chats.append(prompt.build_messages(item.request) + [{"role": "assistant", "content": item.target}])
        for failure in item.failures:
            request = PredictionRequest(
                item.request.key, item.request.snippet, item.request.line, [failure], item.request.usage
            )
            chats.append(prompt.build_messages(request) + [{"role": "assistant", "content": item.target}])
    return chats
