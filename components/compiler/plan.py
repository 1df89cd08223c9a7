"""The LLMCompiler plan grammar and its streaming parser.

A plan is one tool call a line, numbered, with dependencies written `$N` / `${N}`:

    Thought: I need both populations first.
    1. search("population of Velmora")
    2. search("population of Quenthal")
    3. calculate("$1 + $2")
    4. join()<END_OF_PLAN>

Arguments are Python literals (a bare `$N` outside quotes is read as the string "$N"); keyword
arguments are allowed. `join()` depends on every task before it and ends the plan. The streaming
parser is fed text pieces as the planner generates them and emits each task the moment its line
is complete, so the Task Fetching Unit can start it while the rest of the plan is still being
written. A line that looks like a task but is not one (unknown tool, bad arguments, a dependency
on a task that does not precede it, a repeated number) raises `PlanParseError` naming the line.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

END_OF_PLAN = "<END_OF_PLAN>"
JOIN = "join"
_TASK_LINE = re.compile(r"^\s*(\d+)\s*[.:)]\s*(.*)$")
_CALL = re.compile(r"^([A-Za-z_]\w*)\s*\((.*)\)\s*$", re.DOTALL)
_REF = re.compile(r"\$(?:\{(\d+)\}|(\d+))")  # $N or ${N}; a lone "}" after $N is not part of it


def _ref_index(match: re.Match) -> int:
    return int(match.group(1) or match.group(2))


_THOUGHT = re.compile(r"^\s*Thought\s*:\s*(.*)$", re.IGNORECASE)


class PlanParseError(ValueError):
    """A plan line that claims to be a task but cannot be one; `line_no`/`line` locate it."""

    def __init__(self, message: str, line: str = "", line_no: int = 0) -> None:
        super().__init__(f"plan line {line_no}: {message}: {line.strip()!r}" if line else message)
        self.reason, self.line, self.line_no = message, line, line_no


@dataclass
class Task:
    """One numbered call of a plan."""

    idx: int
    tool: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    deps: tuple[int, ...] = ()  # indices whose observations this call needs (join: all before it)
    thought: str = ""  # the `Thought:` line just before it, if any
    line: str = ""

    @property
    def is_join(self) -> bool:
        return self.tool == JOIN

    def render(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.idx}. {self.tool}({', '.join(parts)})"


def references(value: Any) -> set[int]:
    """Every `$N` / `${N}` inside a (nested) argument value."""
    if isinstance(value, str):
        return {_ref_index(m) for m in _REF.finditer(value)}
    if isinstance(value, (list, tuple, set)):
        return set().union(*(references(v) for v in value)) if value else set()
    if isinstance(value, dict):
        return references(list(value.keys())) | references(list(value.values()))
    return set()


def dependency_levels(steps: Sequence[str]) -> list[list[int]]:
    """Plan steps (call texts, step i is `$i+1`) grouped into waves: a step's wave is one more than
    the latest wave it references; each wave's steps can run together once the earlier waves are
    done. What a function-calling model that emits all ready calls per turn does, turn by turn."""
    wave: list[int] = []
    for i, step in enumerate(steps):
        refs = {r - 1 for r in references(step)}
        if any(r >= i or r < 0 for r in refs):
            raise ValueError(f"step {i + 1} ({step!r}) references a step that is not before it")
        wave.append(1 + max((wave[r] for r in refs), default=-1))
    return [[i for i, w in enumerate(wave) if w == level] for level in range(max(wave, default=-1) + 1)]


def substitute(value: Any, observations: dict[int, Any], render=str) -> Any:
    """Replace `$N` with task N's observation: a whole-string `"$N"` becomes the observation itself
    (numbers stay numbers), an embedded one becomes `render(observation)`."""
    if isinstance(value, str):
        whole = _REF.fullmatch(value.strip())
        if whole and _ref_index(whole) in observations:
            return observations[_ref_index(whole)]
        return _REF.sub(
            lambda m: render(observations[_ref_index(m)]) if _ref_index(m) in observations else m.group(0), value
        )
    if isinstance(value, list):
        return [substitute(v, observations, render) for v in value]
    if isinstance(value, tuple):
        return tuple(substitute(v, observations, render) for v in value)
    if isinstance(value, dict):
        return {k: substitute(v, observations, render) for k, v in value.items()}
    return value


def quote_bare_refs(args: str) -> str:
    """`$1 + 2` outside string literals -> `"$1" + 2`: models often forget the quotes."""
    out, quote, i = [], None, 0
    while i < len(args):
        ch = args[i]
        if quote:
            out.append(ch)
            if ch == "\\" and i + 1 < len(args):
                out.append(args[i + 1])
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
            out.append(ch)
        elif ch == "$":
            m = _REF.match(args, i)
            if m:
                out.append(f'"{m.group(0)}"')
                i = m.end()
                continue
            out.append(ch)
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def parse_call(text: str) -> tuple[str, tuple, dict]:
    """`name(arg, key=value)` -> (name, args, kwargs); arguments must be Python literals."""
    m = _CALL.match(text.strip())
    if not m:
        raise ValueError("expected name(arguments)")
    name, raw = m.group(1), m.group(2)
    try:
        call = ast.parse(f"f({quote_bare_refs(raw)})", mode="eval").body
        if not isinstance(call, ast.Call):  # e.g. "1) + f(2" parses as something else
            raise ValueError("not a single call")
        args = tuple(ast.literal_eval(a) for a in call.args)
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}
        if any(kw.arg is None for kw in call.keywords):
            raise ValueError("**kwargs are not allowed")
    except (SyntaxError, ValueError, TypeError) as err:
        raise ValueError(f"arguments are not Python literals ({type(err).__name__}: {err})") from None
    return name, args, kwargs


class StreamingPlanParser:
    """Feed plan text in arbitrary pieces; get each `Task` as soon as its line is complete.

    `tools`: the names a task may call (besides `join`). `known`: indices from earlier rounds
    (after a replan the new plan continues their numbering and may reference them). `strict`:
    raise PlanParseError at a bad line; otherwise skip it and record the error in `errors` (a task
    depending on a skipped one is then skipped too, with its own error), so a weak planner's
    slip costs one line, not the plan.
    """

    def __init__(self, tools: Iterable[str], known: Iterable[int] = (), strict: bool = True) -> None:
        self.tools = set(tools)
        self.known = set(known)
        self.strict = strict
        self.errors: list[PlanParseError] = []
        self.tasks: list[Task] = []
        self.ignored: list[str] = []  # commentary lines that are neither tasks nor thoughts
        self.done = False  # join() or <END_OF_PLAN> seen
        self._buffer = ""
        self._line_no = 0
        self._thought = ""

    def feed(self, piece: str) -> list[Task]:
        """Consume a piece of text; return the tasks whose lines it completed (in order)."""
        if self.done:
            return []
        self._buffer += piece
        emitted: list[Task] = []
        while not self.done:
            cut = self._line_end()
            if cut < 0:
                break
            line, self._buffer = self._buffer[:cut], self._buffer[cut:].lstrip("\n")
            emitted.extend(self._checked_line(line))
        return emitted

    def finish(self) -> list[Task]:
        """The stream ended: parse what is left as a last line."""
        if self.done or not self._buffer.strip():
            self._buffer = ""
            return []
        line, self._buffer = self._buffer, ""
        return self._checked_line(line)

    def _checked_line(self, line: str) -> list[Task]:
        try:
            return self._line(line)
        except PlanParseError as err:
            if self.strict:
                raise
            self.errors.append(err)
            return []

    def _line_end(self) -> int:
        newline = self._buffer.find("\n")
        marker = self._buffer.find(END_OF_PLAN)
        if marker >= 0 and (newline < 0 or marker < newline):
            return marker + len(END_OF_PLAN)
        return newline

    def _line(self, line: str) -> list[Task]:
        self._line_no += 1
        ends_plan = END_OF_PLAN in line
        text = line.replace(END_OF_PLAN, "").strip()
        tasks: list[Task] = []
        if text:
            thought = _THOUGHT.match(text)
            numbered = _TASK_LINE.match(text)
            if thought:
                self._thought = thought.group(1).strip()
            elif numbered:
                tasks.append(self._task(int(numbered.group(1)), numbered.group(2), line))
            elif _CALL.match(text) and _CALL.match(text).group(1) == JOIN:
                tasks.append(self._task(self._next_index(), text, line))  # an unnumbered join()
            else:
                self.ignored.append(text)
        if ends_plan or any(t.is_join for t in tasks):
            self.done = True
        return tasks

    def _next_index(self) -> int:
        return max([*self.known, *(t.idx for t in self.tasks)], default=0) + 1

    def _task(self, idx: int, body: str, line: str) -> Task:
        def fail(reason: str) -> PlanParseError:
            return PlanParseError(reason, line, self._line_no)

        try:
            tool, args, kwargs = parse_call(body)
        except ValueError as err:
            raise fail(str(err)) from None
        if tool != JOIN and tool not in self.tools:
            raise fail(f"unknown tool {tool!r} (tools: {', '.join(sorted(self.tools))}, join)")
        earlier = self.known | {t.idx for t in self.tasks}
        if idx in earlier:
            raise fail(f"task number {idx} is used twice")
        if idx < self._next_index():
            raise fail(f"task number {idx} is out of order (next is {self._next_index()})")
        if tool == JOIN:
            deps = tuple(sorted(t.idx for t in self.tasks))
        else:
            refs = references(list(args) + list(kwargs.values()))
            bad = sorted(r for r in refs if r not in earlier)
            if bad:
                raise fail(f"depends on ${bad[0]}, which is not an earlier task")
            deps = tuple(sorted(refs))
        task = Task(idx, tool, args, kwargs, deps, self._thought, line.strip())
        self._thought = ""
        self.tasks.append(task)
        return task


def parse_plan(text: str, tools: Iterable[str], known: Iterable[int] = ()) -> list[Task]:
    """Parse a whole plan at once (raises PlanParseError on the first bad line)."""
    parser = StreamingPlanParser(tools, known)
    return parser.feed(text) + parser.finish()


def iter_tasks(pieces: Iterable[str], parser: StreamingPlanParser) -> Iterator[Task]:
    """Tasks from a stream of text pieces, each yielded as soon as its line completes; stops
    reading the stream at join() / <END_OF_PLAN> (closing it stops the generation)."""
    for piece in pieces:
        yield from parser.feed(piece)
        if parser.done:
            return
    yield from parser.finish()
