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
from components.selfpico.predictors import PredictionRequest, Predictor, ran_feedback
from components.selfpico.runtime import TRACE_PREFIX

_RUNTIME = (Path(__file__).parent / "runtime.py").read_text()
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
    explored: int = 0  # values replaced after the loop because their run executed more lines (`explore`)

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


def _where(error: RuntimeErrorFound) -> tuple[str, int | None]:
    return error.error_type, error.line


def unique_errors(errors: list[RuntimeErrorFound]) -> list[RuntimeErrorFound]:
    """One error per (type, line), the first met."""
    seen: dict[tuple[str, int | None], RuntimeErrorFound] = {}
    for error in errors:
        seen.setdefault(_where(error), error)
    return list(seen.values())


def first_unrun_line(instrumented: Instrumented, lines: list[str], executed: set[int]) -> str:
    """The text of the first statement line not in `executed` ('' when every one ran)."""
    for line in sorted(set(instrumented.marker_lines.values())):
        if line not in executed and 0 < line <= len(lines):
            return lines[line - 1]
    return ""


def _not_instrumentable(snippet: Snippet, predictor: Predictor, note: str) -> SnippetReport:
    return SnippetReport(snippet.id, predictor.name, 0, 0, 0.0, 0, 0, 0, 0, "not_instrumentable", note=note)


class _SelfGuidedLoop:
    """One snippet's SelfPiCo loop: the state the steps share (values so far, attempts per value,
    the best run's markers, counters) and the steps themselves: run, predict a missing value,
    choose between the predictor's and the fallback's value by execution, blame an exception,
    refine a blamed value with feedback."""

    def __init__(
        self,
        snippet: Snippet,
        instrumented: Instrumented,
        predictor: Predictor,
        sandbox,
        max_retries: int,
        select: bool,
    ):
        self.snippet, self.instrumented, self.predictor, self.sandbox = snippet, instrumented, predictor, sandbox
        self.max_retries = max_retries
        self.fallback: Predictor | None = getattr(predictor, "fallback", None)
        # values the predictor is asked for per new key, each run and the furthest kept (feedback-using
        # predictors only: the later ones are asked with what the earlier ones did)
        self.candidates = max(1, getattr(predictor, "candidates", 1)) if predictor.uses_feedback else 1
        # pick the value that runs furthest: among the predictor's candidates and the fallback's value
        self.select = select and (self.fallback is not None or self.candidates > 1)
        # further (fallback) values a choice's run is carried on for
        self.lookahead = 2 if self.fallback is not None else 0
        self.asked_at: dict[str, object] = {}  # key -> the marker of the run that first asked for it
        self.n_lines = len(set(instrumented.marker_lines.values()))
        self.lines = snippet.code.splitlines()
        self.original = parse_any(snippet.code)
        self.flow = DataFlow(self.original)
        self.values: dict[str, str] = {}
        self.attempts: dict[str, list[tuple[str, str]]] = {}  # key -> (value, what happened): the feedback
        self.scores: dict[str, dict[str, tuple[int, int]]] = {}  # key -> value -> how far its run got
        self.settled: set[str] = set()  # keys whose best value is chosen: no more refinement
        self.retried: dict[str, int] = {}  # key -> feedback retries spent on it
        self.fell_back: set[str] = set()  # keys whose fallback value was tried after the retries
        self.emptied: set[str] = set()  # keys replaced by their empty form after a run that never ended
        self.best: set[int] = set()
        self.errors: list[RuntimeErrorFound] = []
        # the snippet's own exceptions met in the run of a candidate that was not kept: found all the same
        self.errors_on_the_way: list[RuntimeErrorFound] = []
        self.calls = self.retries = self.runs = self.fallbacks = 0
        self.explored = 0  # values replaced after the loop because their run executed more lines
        self.pending: dict | None = None  # a run already made with the current values

    # -- running and reading a run ---------------------------------------------------------------
    def run(self, values: dict[str, str] | None = None) -> dict:
        if self.pending is not None and values is None:
            trace, self.pending = self.pending, None
            return trace
        self.runs += 1
        trace, _ = run_once(self.instrumented, self.values if values is None else values, self.sandbox)
        executed = set(trace["executed"]) & set(self.instrumented.marker_lines)
        if len(executed) > len(self.best):
            self.best = executed
        trace["_line_set"] = {self.instrumented.marker_lines[m] for m in executed}
        trace["_lines"] = len(trace["_line_set"])
        return trace

    def line_text(self, marker: int | None) -> str:
        line = self.instrumented.marker_lines.get(marker) if marker else None
        return self.lines[line - 1] if line and 0 < line <= len(self.lines) else ""

    def request(self, key: str, marker, attempts=()) -> PredictionRequest:
        kind, name = key.split("#", 1)
        usage = describe(shape_for(self.snippet.code, kind, name)) if kind != "import" else ""
        return PredictionRequest(key, self.snippet.code, self.line_text(marker), list(attempts), usage)

    def blame(self, trace: dict) -> RuntimeErrorFound:
        """The exception of an `error` run, attributed by data flow: the injected values the failing
        expression reads, transitively (none: the snippet's own error)."""
        frame_marker = self.instrumented.line_markers.get(trace.get("snippet_frame_line"), trace.get("marker"))
        line = self.instrumented.marker_lines.get(frame_marker)
        reads = failing_reads(self.instrumented, trace, self.original)
        if reads is None:
            reads = _statement_reads(self.original, line)
        injected = [k for k in self.values if k in trace.get("used", [])] or list(self.values)
        blamed = involves_injected(self.flow, reads, injected)
        trace["_frame_marker"] = frame_marker
        found = RuntimeErrorFound(str(trace.get("error_type")), str(trace.get("error")), line, bool(blamed), blamed)
        trace["_found"] = found
        return found

    def score(self, trace: dict, key: str) -> tuple[int, int]:
        """How far a run got with `key`'s current value: lines executed, then how it ended (finished;
        stopped for another value; an error not caused by this value; this value failed)."""
        status = trace["status"]
        if status in ("ok", "exit"):
            rank = 3
        elif status == "missing":
            rank = 2
        elif status == "error":
            rank = 0 if key in self.blame(trace).blamed else 1
        else:
            rank = 0 if trace.get("key") == key else 1
        return trace["_lines"], rank

    def from_fallback(self) -> bool:
        """Whether the predictor's last value was its fallback's, standing in for replies that held none."""
        return bool(getattr(self.predictor, "last_from_fallback", False))

    def ask(self, request: PredictionRequest) -> str | None:
        """The predictor's own value for a further try (None where it gave none: its fallback's value
        stood in, which the executor tries once itself, counted as a fallback)."""
        code = self.predictor.predict(request)
        return None if self.from_fallback() else code

    # -- the steps -------------------------------------------------------------------------------
    def predict_missing(self, key: str, marker) -> bool:
        """A value for a key no run had yet. With a fallback, the predictor's value and the fallback's
        both run; a predictor that takes feedback is then asked for up to `candidates - 1` more values,
        each with what the earlier ones did (their exception, or how many lines ran and the first line
        that never ran); the value whose run reaches furthest is kept (ties: the earlier asked)."""
        self.calls += 1
        self.asked_at.setdefault(key, marker)
        code = self.predictor.predict(self.request(key, marker))
        first_from_fallback = self.from_fallback()
        if code is None:
            return False
        self.values[key] = code
        if not self.select:
            return True
        tried: dict[str, tuple[tuple[int, int], dict, str]] = {}  # value -> (reach, its first run, feedback)
        self.try_value(key, code, tried)
        alternative = self.fallback.predict(self.request(key, marker)) if self.fallback is not None else None
        if alternative is not None and alternative not in tried:
            self.try_value(key, alternative, tried)
        asked = 1
        while asked < self.candidates and self.best_lines(tried) < self.n_lines:
            attempts = [(value, feedback) for value, (_, _, feedback) in tried.items()]
            self.calls += 1
            asked += 1
            code = self.ask(self.request(key, marker, attempts))
            if code is None or code in tried:
                break
            self.try_value(key, code, tried)
        self.scores[key] = {value: score for value, (score, _, _) in tried.items()}
        best = max(tried, key=lambda value: tried[value][0])  # the first of the best: ties keep the earlier
        if best == alternative and (best != next(iter(tried)) or first_from_fallback):
            self.fallbacks += 1
        self.values[key] = best
        self.pending = tried[best][1]
        return True

    def try_value(self, key: str, code: str, tried: dict) -> None:
        """Run the values so far with `code` as `key`'s value; record how far it got and, in words,
        what happened (the feedback for the next value asked)."""
        self.values[key] = code
        first = self.run()
        score, executed = self.reach(first, key)
        if first["status"] == "error" and not first["_found"].involves_injected:
            self.errors_on_the_way.append(first["_found"])
        if score[1] == 0:  # this value failed
            if first["status"] == "error":
                error, marker = f"{first.get('error_type')}: {first.get('error')}", first["_frame_marker"]
            else:
                error, marker = first.get("error") or first.get("reason"), first.get("marker")
            feedback = f"{error} (line `{self.line_text(marker).strip()}`)"
        else:
            unrun = first_unrun_line(self.instrumented, self.lines, executed)
            feedback = ran_feedback(len(executed), self.n_lines, unrun)
        tried[code] = (score, first, feedback)

    def best_lines(self, tried: dict) -> int:
        return max((score[0] for score, _, _ in tried.values()), default=0)

    def reach(self, trace: dict, key: str) -> tuple[tuple[int, int], set[int]]:
        """`score`, with the lines counted over the run carried on for `lookahead` more values (the
        fallback's): a value that only stops where the next one is asked for is judged by where
        the run goes after it. Also the lines the furthest of those runs executed."""
        lines, rank = self.score(trace, key)
        executed = trace["_line_set"]
        carried = dict(self.values)
        for _ in range(self.lookahead):
            wanted = trace.get("key")
            if trace["status"] != "missing" or not isinstance(wanted, str) or wanted in carried:
                break
            guess = self.fallback.predict(self.request(wanted, trace.get("marker")))
            if guess is None:
                break
            carried[wanted] = guess
            trace = self.run(carried)
            if trace["_lines"] > lines:
                lines, executed = trace["_lines"], trace["_line_set"]
        return (lines, rank), executed

    def refine(self, key: str, message: str, marker, score: tuple[int, int]) -> bool:
        """Another value for `key` after it failed with `message`: the predictor again with the
        feedback of every earlier value, then the fallback once; when both are spent, the value
        whose run got furthest is kept (and the key is settled). False: nothing left to try."""
        if key in self.settled:
            return False
        self.scores.setdefault(key, {})[self.values[key]] = score
        self.attempts.setdefault(key, []).append((self.values[key], message))
        tried = [code for code, _ in self.attempts[key]] + list(self.scores[key])
        while self.predictor.uses_feedback and self.retried.get(key, 0) < self.max_retries:
            self.calls += 1
            self.retries += 1
            self.retried[key] = self.retried.get(key, 0) + 1
            code = self.ask(self.request(key, marker, self.attempts[key]))
            if code is None:
                break  # the predictor holds no further value: the fallback's is next
            if code not in tried:
                self.values[key] = code
                return True
            self.attempts[key].append((code, "this value was tried already and failed"))
        if self.fallback is not None and key not in self.fell_back:
            self.fell_back.add(key)
            code = self.fallback.predict(self.request(key, marker))
            if code is not None and code not in tried:
                self.fallbacks += 1
                self.values[key] = code
                return True
        self.settled.add(key)
        best = max(self.scores[key], key=lambda code: self.scores[key][code])
        if self.scores[key][best] > score and best != self.values[key]:
            self.values[key] = best
            return True
        return False

    def deciding_keys(self, line: int) -> list[str]:
        """The injected keys that decide whether `line` runs: those the test (or loop iterable) of the
        innermost `if`/`while`/`for` holding it reads, by data flow; then the others, latest first."""
        keys = [k for k in self.values if not k.startswith("import#")]
        holders = [
            node
            for node in ast.walk(self.original)
            if isinstance(node, (ast.If, ast.While, ast.For)) and node.lineno < line <= (node.end_lineno or node.lineno)
        ]
        deciding: list[str] = []
        if holders:
            inner = max(holders, key=lambda node: node.lineno)
            reads = _reads(inner.iter if isinstance(inner, ast.For) else inner.test, cut=False)
            deciding = [k for k in involves_injected(self.flow, reads, keys) if k in keys]
        return deciding + [k for k in reversed(keys) if k not in deciding]

    def explore(self, status: str, note: str, budget: int, max_runs: int) -> tuple[str, str]:
        """The self-guided loop past the end of a run that left lines unexecuted: the predictor is asked
        for another value of a key deciding the first line that never ran, with how far the values got
        as feedback ("it ran 9 of the 12 lines; line `...` never ran"); a value whose run executes more
        lines than any run so far, and ends without an exception, is kept (and the loop carried on
        from it when it stops for a new value); any other is dropped.
        At most `budget` values are asked for."""
        if not self.predictor.uses_feedback or status in ("no_trace", "bad_value"):
            return status, note
        asked: set[str] = set()
        for _ in range(budget):
            best = {self.instrumented.marker_lines[m] for m in self.best}
            unrun = [n for n in sorted(set(self.instrumented.marker_lines.values())) if n not in best]
            if not unrun:
                break
            key = next((k for k in self.deciding_keys(unrun[0]) if k not in asked), None)
            if key is None:
                break
            asked.add(key)
            text = self.lines[unrun[0] - 1] if 0 < unrun[0] <= len(self.lines) else ""
            feedback = ran_feedback(len(best), self.n_lines, text)
            attempts = self.attempts.get(key, []) + [(self.values[key], feedback)]
            self.calls += 1
            code = self.ask(self.request(key, self.asked_at.get(key), attempts))
            if code is None or code == self.values[key] or code in self.scores.get(key, {}):
                continue
            trace = self.run({**self.values, key: code})
            self.scores.setdefault(key, {})[code] = self.score(trace, key)
            if trace["_lines"] <= len(best) or trace["status"] not in ("ok", "exit", "missing"):
                continue  # ran no further than before, or ended in an exception: dropped
            self.values[key] = code
            self.explored += 1
            if trace["status"] == "missing":
                self.pending = trace
                status, note = self.loop(max_runs)
        return status, note

    def end_loop(self) -> bool:
        """After a run the sandbox killed (time, memory or output limit) with values injected: a predicted
        value may keep a loop going, an object whose `.next` is always another object, nodes whose
        `.children` always have children. The values a loop's test or iterable reads (by data flow),
        the latest first, are replaced by their empty form (None, [], {}, ...), which ends such a loop;
        each key once. False when no such value is left."""
        keys = [k for k in self.values if not k.startswith("import#")]
        reads: set[str] = set()
        for node in ast.walk(self.original):
            if isinstance(node, ast.While):
                reads |= _reads(node.test, cut=False)
            elif isinstance(node, (ast.For, ast.comprehension)):
                reads |= _reads(node.iter, cut=False)
        looping = involves_injected(self.flow, reads, keys)
        for key in reversed(keys):
            if key in looping and key not in self.emptied:
                self.emptied.add(key)
                empty = _empty_form(self.values[key])
                if empty != self.values[key]:
                    self.values[key] = empty
                    return True
        return False

    def loop(self, max_runs: int) -> tuple[str, str]:
        """Run until the snippet finishes, fails on its own, or no value is left to try."""
        status, note = "ok", ""
        for _ in range(max_runs):  # rounds: each adds or replaces one value
            trace = self.run()
            status, key, marker = trace["status"], trace.get("key"), trace.get("marker")
            if status == "missing" and isinstance(key, str) and key not in self.values:
                if self.predict_missing(key, marker):
                    continue
                break
            if status == "bad_value" and key in self.values:
                message = f"{trace.get('error')} (line `{self.line_text(marker).strip()}`)"
                if self.refine(key, message, marker, self.score(trace, key)):
                    continue
                tried = "; ".join(f"{code!r} -> {error}" for code, error in self.attempts[key])
                note = f"no working value for {key} after {len(self.attempts[key])} attempts: {tried}"
                line = self.instrumented.marker_lines.get(marker)
                self.errors.append(RuntimeErrorFound("BadValue", note, line, True, [key]))
                break
            if status == "error":
                found = self.blame(trace)
                frame_marker = trace["_frame_marker"]
                message = f"{found.error_type}: {found.message} (line `{self.line_text(frame_marker).strip()}`)"
                # the blamed values in turn, the latest first: a settled one gives the next its chance
                suspects = [k for k in reversed(found.blamed) if k in self.values]
                if any(self.refine(k, message, frame_marker, self.score(trace, k)) for k in suspects):
                    continue
                self.errors.append(found)
                break
            if status == "no_trace":
                if str(trace.get("reason")).startswith("killed") and self.end_loop():
                    continue
                note = f"no verifiable trace from the sandbox ({trace.get('reason')})"
            break
        return status, note

    def report(self, status: str, note: str, seconds: float) -> SnippetReport:
        # Coverage counts lines, as the paper's outside tester does: distinct lines where a statement starts.
        n_lines = len(set(self.instrumented.marker_lines.values()))
        executed_lines = len({self.instrumented.marker_lines[m] for m in self.best})
        return SnippetReport(
            self.snippet.id,
            self.predictor.name,
            self.instrumented.n_markers,
            len(self.best),
            executed_lines / n_lines if n_lines else 0.0,
            self.runs,
            len(self.values),
            self.calls,
            self.retries,
            status,
            self.errors
            + [e for e in unique_errors(self.errors_on_the_way) if _where(e) not in map(_where, self.errors)],
            dict(self.values),
            seconds,
            note,
            self.fallbacks,
            n_lines,
            executed_lines,
            self.explored,
        )


def _empty_form(code: str) -> str:
    """The empty value of a value code's kind: what ends a loop over it or a walk through it."""
    text = code.strip()
    for opening, empty in (("[", "[]"), ("{", "{}"), ("(", "()"), ("'", "''"), ('"', "''")):
        if text.startswith(opening):
            return empty
    return "0" if text[:1].isdigit() or text[:1] == "-" else "None"


# The loop's bounds: the defaults of the selfpico flow and of the benchmark.
MAX_RUNS = 30  # sandboxed executions per snippet: one new value per run
MAX_RETRIES = 3  # feedback retries per value (SelfPiCo's self-guided refinement)
EXPLORE = 2  # values a feedback-using predictor is asked after the loop, for keys deciding lines never run


def execute_snippet(
    snippet: Snippet,
    predictor: Predictor,
    sandbox,
    max_runs: int = MAX_RUNS,
    max_retries: int = MAX_RETRIES,
    select_by_execution: bool = True,
    explore: int = EXPLORE,
) -> SnippetReport:
    """SelfPiCo on one snippet. `select_by_execution`: where the predictor has a fallback, or is asked
    for several candidates, the values of a key are run and the one that runs furthest is kept (the
    self-guided refinement's choice of the value that executes the most lines). `explore`: values a
    feedback-using predictor is asked for, after the loop, for keys deciding lines that never ran."""
    start = time.perf_counter()
    try:
        instrumented = instrument(snippet.code)
    except InstrumentationError as err:
        return _not_instrumentable(snippet, predictor, str(err))
    except Exception as err:  # noqa: BLE001 - one snippet the instrumentation cannot handle fails alone
        return _not_instrumentable(snippet, predictor, f"{type(err).__name__}: {err}")
    session = _SelfGuidedLoop(snippet, instrumented, predictor, sandbox, max_retries, select_by_execution)
    status, note = session.loop(max_runs)
    status, note = session.explore(status, note, explore, max_runs)
    return session.report(status, note, time.perf_counter() - start)


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
