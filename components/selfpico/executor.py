"""The SelfPiCo loop on the host: run in the sandbox, predict what was missing, run again.

Each run executes the instrumented snippet from the start with every value predicted so far (the
runtime caches one value per key, so a name keeps its value). A run that stops on a missing value
asks the predictor for it; a run whose predicted value's code fails, or that raises on a line
which used injected values, feeds the error back to a feedback-using predictor (at most
`max_retries` times per key). Line coverage is the best run's distinct executed markers ÷ markers.
"""
from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from components.selfpico.instrument import Instrumented, InstrumentationError, instrument
from components.selfpico.predictors import PredictionRequest, Predictor

_RUNTIME = (Path(__file__).parent / "runtime.py").read_text()


@dataclass
class Snippet:
    id: str
    code: str
    origin: str = "written"  # "written" (for this project) | "package:<module>" (extracted at run time)
    expected_error: str | None = None  # a runtime error the snippet genuinely contains, if known


@dataclass
class RuntimeErrorFound:
    error_type: str
    message: str
    line: int | None  # line in the original snippet
    involves_injected: bool  # the failing line used predicted values (may be the prediction's fault)


@dataclass
class SnippetReport:
    snippet_id: str
    predictor: str
    n_markers: int
    executed_markers: int
    coverage: float
    runs: int
    predictions: int
    predictor_calls: int
    retries: int
    final_status: str
    errors: list[RuntimeErrorFound] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)
    wall_seconds: float = 0.0
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _program(instrumented: Instrumented, values: dict[str, str], nonce: str) -> str:
    return f"{_RUNTIME}\n_pico_main_({instrumented.source!r}, json.loads({json.dumps(values)!r}), {nonce!r})\n"


def _parse_trace(stdout: str, nonce: str) -> dict | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(nonce):
            return json.loads(line[len(nonce):])
    return None  # killed before the trace (limits), or the snippet ended the process itself


def run_once(instrumented: Instrumented, values: dict[str, str], sandbox) -> tuple[dict, str]:
    """One sandboxed execution; returns the runtime's trace (or a synthetic one) and the payload's stdout."""
    nonce = "@@pico-" + secrets.token_hex(8) + "@@"
    result = sandbox.run_python(_program(instrumented, values, nonce))
    trace = _parse_trace(result.stdout, nonce)
    if trace is None:
        trace = {"status": "killed", "reason": result.describe(), "executed": [], "used_on_line": [], "marker": None}
    return trace, result.stdout


def execute_snippet(snippet: Snippet, predictor: Predictor, sandbox, max_runs: int = 30,
                    max_retries: int = 3) -> SnippetReport:
    start = time.perf_counter()
    try:
        instrumented = instrument(snippet.code)
    except InstrumentationError as err:
        return SnippetReport(snippet.id, predictor.name, 0, 0, 0.0, 0, 0, 0, 0, "not_instrumentable", note=str(err))
    lines = snippet.code.splitlines()

    def line_text(marker: int | None) -> str:
        line = instrumented.marker_lines.get(marker) if marker else None
        return lines[line - 1] if line and 0 < line <= len(lines) else ""

    values: dict[str, str] = {}
    attempts: dict[str, list[tuple[str, str]]] = {}
    best: set[int] = set()
    errors: list[RuntimeErrorFound] = []
    calls = retries = runs = 0
    status = "ok"
    for runs in range(1, max_runs + 1):
        trace, _ = run_once(instrumented, values, sandbox)
        executed = set(trace["executed"]) & set(instrumented.marker_lines)
        if len(executed) > len(best):
            best = executed
        status = trace["status"]
        key = trace.get("key")
        if status == "missing":
            request = PredictionRequest(key, snippet.code, line_text(trace["marker"]))
            calls += 1
            code = predictor.predict(request)
            if code is None:
                break
            values[key] = code
            continue
        if status == "bad_value" and predictor.uses_feedback and len(attempts.get(key, [])) < max_retries:
            attempts.setdefault(key, []).append((values[key], trace["error"]))
            code = _repredict(predictor, key, snippet, line_text(trace["marker"]), attempts[key])
            calls += 1
            retries += 1
            if code is None:
                break
            values[key] = code
            continue
        if status == "error":
            used = trace.get("used_on_line") or []
            line = instrumented.marker_lines.get(trace["marker"])
            found = RuntimeErrorFound(trace["error_type"], trace["error"], line, bool(used))
            suspect = next((k for k in reversed(used) if len(attempts.get(k, [])) < max_retries), None)
            if predictor.uses_feedback and suspect is not None:
                message = f"{trace['error_type']}: {trace['error']}"
                attempts.setdefault(suspect, []).append((values[suspect], message))
                code = _repredict(predictor, suspect, snippet, line_text(trace["marker"]), attempts[suspect])
                calls += 1
                retries += 1
                if code is not None and code != values[suspect]:
                    values[suspect] = code
                    continue
            errors.append(found)
        break
    n = instrumented.n_markers
    return SnippetReport(snippet.id, predictor.name, n, len(best), len(best) / n if n else 0.0, runs, len(values),
                         calls, retries, status, errors, dict(values), time.perf_counter() - start)


def _repredict(predictor: Predictor, key: str, snippet: Snippet, line: str, attempts) -> str | None:
    return predictor.predict(PredictionRequest(key, snippet.code, line, list(attempts)))


def summarize(reports: list[dict]) -> dict[str, float]:
    """Aggregate `SnippetReport.as_dict()` rows (plus `origin`, `expected_error`): the flow's metrics
    and the benchmark's per-predictor figures."""
    def mean(values) -> float:
        values = list(values)
        return sum(values) / len(values) if values else 0.0

    errors = [e for r in reports for e in r["errors"]]
    return {
        "line_coverage": mean(r["coverage"] for r in reports),
        "line_coverage.written": mean(r["coverage"] for r in reports if r["origin"] == "written"),
        "line_coverage.package": mean(r["coverage"] for r in reports if r["origin"] != "written"),
        "fully_executed_fraction": mean(r["coverage"] == 1.0 for r in reports),
        "runs_per_snippet": mean(r["runs"] for r in reports),
        "predictor_calls_per_snippet": mean(r["predictor_calls"] for r in reports),
        "wall_s_per_snippet": mean(r["wall_seconds"] for r in reports),
        "runtime_errors_found": float(len(errors)),
        "type_errors_found": float(sum(e["error_type"] == "TypeError" for e in errors)),
        "type_errors_not_involving_predictions": float(
            sum(e["error_type"] == "TypeError" and not e["involves_injected"] for e in errors)),
        "expected_errors_found": float(sum(any(e["error_type"] == r["expected_error"] for e in r["errors"])
                                           for r in reports if r["expected_error"])),
        "snippets": float(len(reports)),
    }
