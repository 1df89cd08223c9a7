"""The SelfPiCo loop on the host: run in the sandbox, predict what was missing, run again.

Each run executes the instrumented snippet from the start with every value predicted so far (the
runtime caches one value per key, so a name keeps its value). A run that stops on a missing value
asks the predictor for it. A run whose predicted value's code fails, or that raises in an
expression whose data flow reaches injected values, feeds the error back to a feedback-using
predictor (at most `max_retries` times per key: the exception, the line, what the code does with
the value); when the retries run out, the predictor's fallback (rule-based) value is tried once.
An exception whose failing expression reads nothing injected (transitively) is the snippet's own.
Line coverage is the best run's distinct executed markers / markers.

The trace comes back on stdout signed with an HMAC whose key only the runtime's stdin carried; it
is checked before it is parsed, parsed only up to a size and nesting bound, and validated, so a
snippet that prints a forged or hostile trace fails alone (status `no_trace`).
"""

from __future__ import annotations

import ast
import hmac
import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from components.selfpico.analysis import DataFlow, _reads, describe, involves_injected, parse_any, shape_for
from components.selfpico.instrument import InstrumentationError, Instrumented, instrument
from components.selfpico.predictors import PredictionRequest, Predictor

_RUNTIME = (Path(__file__).parent / "runtime.py").read_text()
TRACE_PREFIX = "@@pico-trace@@"
MAX_TRACE_CHARS = 1 << 20
MAX_TRACE_DEPTH = 8


@dataclass
class Snippet:
    id: str
    code: str
    origin: str = "written"  # "written" | "heldout" | "user:<file>" | "package:<module>"
    expected_error: str | None = None  # a runtime error the snippet genuinely contains, if known
    expected_error_line: int | None = None  # where (1-based line of `code`), if known


@dataclass
class RuntimeErrorFound:
    error_type: str
    message: str
    line: int | None  # line in the original snippet
    involves_injected: bool  # the failing expression's data flow reaches predicted values
    blamed: list[str] = field(default_factory=list)  # those values' keys


@dataclass
class SnippetReport:
    snippet_id: str
    predictor: str
    n_markers: int
    executed_markers: int
    coverage: float  # line coverage: executed_lines / n_lines
    runs: int
    predictions: int
    predictor_calls: int
    retries: int
    final_status: str
    errors: list[RuntimeErrorFound] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)
    wall_seconds: float = 0.0
    note: str = ""
    fallbacks: int = 0  # values taken from the fallback predictor after the retries ran out
    n_lines: int = 0  # distinct lines where a statement starts
    executed_lines: int = 0  # of those, lines whose statement ran (coverage = executed_lines / n_lines)

    def as_dict(self) -> dict:
        return asdict(self)


def _program(instrumented: Instrumented, values: dict[str, str]) -> str:
    return f"{_RUNTIME}\n_pico_main_({instrumented.source!r}, json.loads({json.dumps(values)!r}))\n"


def _depth_ok(text: str, limit: int) -> bool:
    """Nesting of JSON brackets (outside strings) stays within `limit`: json.loads recurses per level."""
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def _valid(trace) -> bool:
    if not isinstance(trace, dict) or not isinstance(trace.get("status"), str):
        return False
    for name in ("executed", "used_on_line", "used"):
        if not isinstance(trace.get(name, []), list):
            return False
    if not all(isinstance(i, int) for i in trace.get("executed", [])):
        return False
    return all(isinstance(k, str) for k in trace.get("used_on_line", []) + trace.get("used", []))


def parse_trace(stdout: str, key: str) -> dict | None:
    """The runtime's signed trace in `stdout`, or None when there is none that verifies."""
    for line in reversed(stdout.splitlines()):
        if not line.startswith(TRACE_PREFIX + " ") or len(line) > MAX_TRACE_CHARS:
            continue
        _, mac, data = (line.split(" ", 2) + ["", ""])[:3]
        expected = hmac.new(key.encode(), data.encode(), "sha256").hexdigest()
        if not hmac.compare_digest(mac, expected) or not _depth_ok(data, MAX_TRACE_DEPTH):
            continue
        try:
            trace = json.loads(data)
        except (ValueError, RecursionError):
            continue
        if _valid(trace):
            return trace
    return None  # killed before the trace (limits), the snippet ended the process, or nothing verified


def run_once(instrumented: Instrumented, values: dict[str, str], sandbox) -> tuple[dict, str]:
    """One sandboxed execution; returns the runtime's trace (or a synthetic one) and the payload's stdout."""
    key = secrets.token_hex(16)
    result = sandbox.run_python(_program(instrumented, values), stdin=key + "\n")
    trace = parse_trace(result.stdout, key)
    if trace is None:
        trace = {
            "status": "no_trace",
            "reason": result.describe(),
            "executed": [],
            "used_on_line": [],
            "used": [],
            "marker": None,
        }
    return trace, result.stdout


class _Uninstrument(ast.NodeTransformer):
    """The instrumented expression back in the snippet's terms (hooks replaced by what they wrap)."""

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        func = node.func.id if isinstance(node.func, ast.Name) else None
        if func == "_pico_n_" and len(node.args) == 3 and isinstance(node.args[1], ast.Constant):
            return ast.Name(node.args[1].value, ast.Load())
        if func == "_pico_a_" and len(node.args) == 3 and isinstance(node.args[2], ast.Constant):
            return ast.Attribute(node.args[1], node.args[2].value, ast.Load())
        if func == "_pico_aug_" and len(node.args) == 3:
            return ast.BinOp(node.args[1], ast.Add(), node.args[2])
        return node


def failing_reads(instrumented: Instrumented, trace: dict, original: ast.Module) -> set[str] | None:
    """Paths the failing expression reads: the instrumented node at the traceback's position, in the
    snippet's terms. A type-fixing call or comparison *inside* it cuts; the node itself does not."""
    position = trace.get("position")
    if not (isinstance(position, list) and len(position) == 4 and all(isinstance(p, int) for p in position)):
        return None
    line, col, end_line, end_col = position
    tree = ast.parse(instrumented.source)
    best = None
    for node in ast.walk(tree):
        if (
            isinstance(node, (ast.expr, ast.stmt))
            and getattr(node, "lineno", None) == line
            and node.col_offset == col
            and node.end_lineno == end_line
            and node.end_col_offset == end_col
        ):
            best = node if best is None or isinstance(best, ast.stmt) else best
    if best is None:
        return None
    node = _Uninstrument().visit(best)
    if isinstance(node, ast.stmt):
        return set().union(
            *[_reads(child, cut=False) for child in ast.iter_child_nodes(node) if isinstance(child, ast.expr)]
        )
    reads = set()
    for child in ast.iter_child_nodes(node):
        reads |= _reads(child, cut=True)
    if isinstance(node, (ast.Name, ast.Attribute)):
        reads |= _reads(node, cut=False)
    elif isinstance(node, ast.Call):
        reads |= _reads(node.func, cut=False) | set().union(*[_reads(a, cut=False) for a in node.args])
    return reads


def _statement_reads(original: ast.Module, line: int | None) -> set[str]:
    """Fallback when the position is unknown: everything the statements on `line` read."""
    reads: set[str] = set()
    for node in ast.walk(original):
        if isinstance(node, ast.stmt) and node.lineno == line:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.expr):
                    reads |= _reads(child, cut=False)
    return reads


def execute_snippet(
    snippet: Snippet, predictor: Predictor, sandbox, max_runs: int = 30, max_retries: int = 3
) -> SnippetReport:
    start = time.perf_counter()
    try:
        instrumented = instrument(snippet.code)
    except InstrumentationError as err:
        return SnippetReport(snippet.id, predictor.name, 0, 0, 0.0, 0, 0, 0, 0, "not_instrumentable", note=str(err))
    except Exception as err:  # noqa: BLE001 - one snippet the instrumentation cannot handle fails alone
        return SnippetReport(
            snippet.id, predictor.name, 0, 0, 0.0, 0, 0, 0, 0, "not_instrumentable", note=f"{type(err).__name__}: {err}"
        )
    lines = snippet.code.splitlines()
    original = parse_any(snippet.code)
    flow = DataFlow(original)
    fallback: Predictor | None = getattr(predictor, "fallback", None)

    def line_text(marker: int | None) -> str:
        line = instrumented.marker_lines.get(marker) if marker else None
        return lines[line - 1] if line and 0 < line <= len(lines) else ""

    def request(key: str, marker, attempts=()) -> PredictionRequest:
        kind, name = key.split("#", 1)
        usage = describe(shape_for(snippet.code, kind, name)) if kind != "import" else ""
        return PredictionRequest(key, snippet.code, line_text(marker), list(attempts), usage)

    values: dict[str, str] = {}
    attempts: dict[str, list[tuple[str, str]]] = {}
    fell_back: set[str] = set()
    best: set[int] = set()
    errors: list[RuntimeErrorFound] = []
    calls = retries = runs = fallbacks = 0
    status, note = "ok", ""

    def refine(key: str, message: str, marker) -> bool:
        """Another value for `key` after `message`: feedback retry, else the fallback once."""
        nonlocal calls, retries, fallbacks
        attempts.setdefault(key, []).append((values[key], message))
        while predictor.uses_feedback and len(attempts[key]) <= max_retries:
            calls += 1
            retries += 1
            code = predictor.predict(request(key, marker, attempts[key]))
            if code is None:
                break
            if code not in [c for c, _ in attempts[key]]:
                values[key] = code
                return True
            attempts[key].append((code, "this value was tried already and failed"))
        if fallback is not None and key not in fell_back:
            fell_back.add(key)
            code = fallback.predict(request(key, marker))
            if code is not None and code not in [c for c, _ in attempts[key]]:
                fallbacks += 1
                values[key] = code
                return True
        return False

    for runs in range(1, max_runs + 1):  # noqa: B007 - the count is read after the loop
        trace, _ = run_once(instrumented, values, sandbox)
        executed = set(trace["executed"]) & set(instrumented.marker_lines)
        if len(executed) > len(best):
            best = executed
        status = trace["status"]
        key = trace.get("key")
        marker = trace.get("marker")
        if status == "missing" and isinstance(key, str) and key not in values:
            calls += 1
            code = predictor.predict(request(key, marker))
            if code is None:
                break
            values[key] = code
            continue
        if status == "bad_value" and key in values:
            message = f"{trace.get('error')} (line `{line_text(marker).strip()}`)"
            if refine(key, message, marker):
                continue
            tried = "; ".join(f"{code!r} -> {error}" for code, error in attempts[key])
            note = f"no working value for {key} after {len(attempts[key])} attempts: {tried}"
            errors.append(RuntimeErrorFound("BadValue", note, instrumented.marker_lines.get(marker), True, [key]))
            break
        if status == "error":
            frame_marker = instrumented.line_markers.get(trace.get("snippet_frame_line"), marker)
            line = instrumented.marker_lines.get(frame_marker)
            reads = failing_reads(instrumented, trace, original)
            if reads is None:
                reads = _statement_reads(original, line)
            injected = [k for k in values if k in trace.get("used", [])] or list(values)
            blamed = involves_injected(flow, reads, injected)
            message = f"{trace.get('error_type')}: {trace.get('error')}"
            suspect = next((k for k in reversed(blamed) if k in values), None)
            if suspect is not None and refine(
                suspect, f"{message} (line `{line_text(frame_marker).strip()}`)", frame_marker
            ):
                continue
            errors.append(
                RuntimeErrorFound(str(trace.get("error_type")), str(trace.get("error")), line, bool(blamed), blamed)
            )
            break
        if status == "no_trace":
            note = f"no verifiable trace from the sandbox ({trace.get('reason')})"
        break
    # Coverage counts lines, as the paper's outside tester does: distinct lines where a statement starts.
    n_lines = len(set(instrumented.marker_lines.values()))
    executed_lines = len({instrumented.marker_lines[m] for m in best})
    return SnippetReport(
        snippet.id,
        predictor.name,
        instrumented.n_markers,
        len(best),
        executed_lines / n_lines if n_lines else 0.0,
        runs,
        len(values),
        calls,
        retries,
        status,
        errors,
        dict(values),
        time.perf_counter() - start,
        note,
        fallbacks,
        n_lines,
        executed_lines,
    )


def summarize(reports: list[dict]) -> dict[str, float]:
    """Aggregate `SnippetReport.as_dict()` rows (plus `origin`, `expected_error`): the flow's metrics
    and the benchmark's per-predictor figures."""

    def mean(values) -> float:
        values = list(values)
        return sum(values) / len(values) if values else 0.0

    errors = [e for r in reports for e in r["errors"]]
    groups = sorted({r["origin"].split(":", 1)[0] for r in reports})  # written | package | heldout | user
    return {
        "line_coverage": mean(r["coverage"] for r in reports),
        **{
            f"line_coverage.{g}": mean(r["coverage"] for r in reports if r["origin"].split(":", 1)[0] == g)
            for g in groups
        },
        "fully_executed_fraction": mean(r["coverage"] == 1.0 for r in reports),
        "runs_per_snippet": mean(r["runs"] for r in reports),
        "predictor_calls_per_snippet": mean(r["predictor_calls"] for r in reports),
        "wall_s_per_snippet": mean(r["wall_seconds"] for r in reports),
        "runtime_errors_found": float(len(errors)),
        "type_errors_found": float(sum(e["error_type"] == "TypeError" for e in errors)),
        "type_errors_not_involving_predictions": float(
            sum(e["error_type"] == "TypeError" and not e["involves_injected"] for e in errors)
        ),
        "expected_errors_found": float(
            sum(
                any(e["error_type"] == r["expected_error"] for e in r["errors"]) for r in reports if r["expected_error"]
            )
        ),
        "snippets": float(len(reports)),
    }
