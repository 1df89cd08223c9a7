"""LLMCompiler (planner -> Task Fetching Unit -> joiner, with replanning) and the ReAct baseline.

Both agents take the same LLM, the same tool descriptions and the same `submit(tool, args, kwargs)`
executor, so a comparison between them differs only in how calls are planned and scheduled:
LLMCompiler writes the whole plan in one (streamed) LLM call and runs independent calls in
parallel; ReAct asks the LLM for one action at a time and waits for each observation.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from components.compiler.fetching import Submit, TaskFetchingUnit, TaskRecord, resolve
from components.compiler.plan import END_OF_PLAN, StreamingPlanParser, Task, iter_tasks, parse_call
from components.compiler.prompts import (
    EXAMPLES,
    Example,
    joiner_messages,
    parallel_fc_messages,
    planner_messages,
    react_messages,
    scratchpad,
)
from components.llm.base import LLM
from components.tools.base import ToolResult

_FINISH = re.compile(r"\b(Finish|Replan)\s*\((.*)\)", re.DOTALL | re.IGNORECASE)
_ACTION = re.compile(r"Action\s*\d*\s*:\s*(.+)")


@dataclass
class AgentResult:
    question: str
    method: str  # "llmcompiler" | "react" | "parallel_fc"
    answer: str | None  # None: no answer (out of steps / replans)
    latency_s: float = 0.0
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tool_calls: int = 0
    replans: int = 0
    errors: list[str] = field(default_factory=list)  # malformed plan lines / actions, failed tools
    trace: list[dict] = field(default_factory=list)  # per round (compiler) or per step (react)

    def as_dict(self) -> dict:
        return asdict(self)


def parse_final(text: str) -> tuple[str, str] | None:
    """('finish' | 'replan', argument) from `Finish(...)` / `Replan(...)`, or None."""
    m = _FINISH.search(text)
    if not m:
        return None
    arg = m.group(2).strip()
    if len(arg) >= 2 and arg[0] == arg[-1] and arg[0] in "\"'":
        arg = arg[1:-1]
    return m.group(1).lower(), arg.strip()


class _UsageDelta:
    def __init__(self, llm: LLM) -> None:
        self.llm, self.start = llm, dict(llm.usage.as_dict())

    def fill(self, result: AgentResult) -> None:
        now = self.llm.usage.as_dict()
        result.llm_calls = int(now["calls"] - self.start["calls"])
        result.prompt_tokens = int(now["prompt_tokens"] - self.start["prompt_tokens"])
        result.completion_tokens = int(now["completion_tokens"] - self.start["completion_tokens"])


class LLMCompiler:
    """Plan (streamed) -> dispatch ready tasks in parallel -> join: Finish or Replan (up to max_replans)."""

    def __init__(
        self,
        llm: LLM,
        tools: dict[str, str],
        submit: Submit,
        max_replans: int = 1,
        planner_max_tokens: int = 320,
        joiner_max_tokens: int = 96,
        temperature: float = 0.0,
        examples: tuple[Example, ...] = EXAMPLES,
    ) -> None:
        if max_replans < 0:
            raise ValueError(f"max_replans must be >= 0, got {max_replans}")
        self.llm, self.tools, self.submit = llm, tools, submit  # tools: name -> description
        self.max_replans = max_replans
        self.planner_max_tokens, self.joiner_max_tokens = planner_max_tokens, joiner_max_tokens
        self.temperature = temperature
        self.examples = examples  # few-shot examples in the prompts; () for a model tuned to the format

    def run(self, question: str) -> AgentResult:
        start, usage = time.perf_counter(), _UsageDelta(self.llm)
        result = AgentResult(question, "llmcompiler", None)
        done: dict[int, ToolResult] = {}  # every round's results: later plans may use their $N
        steps: list[tuple[str, str]] = []  # (executed call, observation) for the joiner
        context = ""
        for round_no in range(self.max_replans + 1):
            parser = StreamingPlanParser(self.tools, known=done.keys(), strict=False)
            plan_text: list[str] = []
            messages = planner_messages(question, list(self.tools.values()), context, self.examples)
            fetcher = TaskFetchingUnit(self.submit)
            records = fetcher.run(self._plan_stream(messages, parser, plan_text), known=done)
            round_steps = [
                (_render_call(r), str(r.result))
                for r in records.values()
                if not r.task.is_join and r.result is not None
            ]
            steps += round_steps
            done.update({i: r.result for i, r in records.items() if r.result is not None})
            errors = [str(e) for e in parser.errors]
            if fetcher.plan_error is not None:
                errors.append(f"planner failed: {type(fetcher.plan_error).__name__}: {fetcher.plan_error}")
            errors += [
                f"task {i} failed: {r.result.error}"
                for i, r in records.items()
                if r.result is not None and not r.result.ok
            ]
            result.errors += errors
            result.tool_calls += sum(r.submitted for r in records.values())
            join_messages = joiner_messages(
                question, steps + [("Plan errors", "; ".join(errors))] if errors else steps, self.examples
            )
            joined = self.llm.chat(join_messages, max_tokens=self.joiner_max_tokens, temperature=self.temperature)
            decision = parse_final(joined.text)
            result.trace.append(
                {
                    "round": round_no,
                    "plan": "".join(plan_text),
                    "errors": errors,
                    "joiner": joined.text,
                    "tasks": [_record_dict(r) for r in records.values()],
                }
            )
            if decision is None:  # no Finish/Replan: take the joiner's text as its answer
                result.errors.append(f"joiner wrote neither Finish(...) nor Replan(...): {joined.text[:200]!r}")
                result.answer = _strip_thought(joined.text)
                break
            kind, argument = decision
            if kind == "finish":
                result.answer = argument
                break
            if round_no == self.max_replans:
                result.errors.append(f"joiner asked to replan with no replans left: {argument}")
                break
            result.replans += 1
            context = scratchpad(steps) + f"\nReplan because: {argument}"  # every round so far
        result.latency_s = time.perf_counter() - start
        usage.fill(result)
        return result

    def _plan_stream(self, messages, parser: StreamingPlanParser, plan_text: list[str]) -> Iterator[Task]:
        stream = self.llm.stream_chat(
            messages,
            max_tokens=self.planner_max_tokens,
            temperature=self.temperature,
            stop=[END_OF_PLAN, "\nQuestion:"],
        )

        def recorded() -> Iterator[str]:
            for piece in stream:
                plan_text.append(piece)
                yield piece

        try:
            yield from iter_tasks(recorded(), parser)
        finally:
            stream.close()  # join() seen: stop generating (and account the usage)


class ReActAgent:
    """Thought / Action / Observation, one tool call per LLM call, on the same tools and executor."""

    method = "react"

    def __init__(
        self,
        llm: LLM,
        tools: dict[str, str],
        submit: Submit,
        max_steps: int = 8,
        step_max_tokens: int = 96,
        temperature: float = 0.0,
        examples: tuple[Example, ...] = EXAMPLES,
    ) -> None:
        self.llm, self.tools, self.submit = llm, tools, submit
        self.max_steps, self.step_max_tokens, self.temperature = max_steps, step_max_tokens, temperature
        self.examples = examples

    def messages(self, question: str, trajectory: str):
        return react_messages(question, list(self.tools.values()), trajectory, self.examples)

    @staticmethod
    def actions(text: str) -> list[str]:
        """The calls of one turn: ReAct's first `Action:` line (nothing after it counts)."""
        first = _ACTION.search(text)
        return [first.group(1).strip()] if first else []

    def run(self, question: str) -> AgentResult:
        start, usage = time.perf_counter(), _UsageDelta(self.llm)
        result = AgentResult(question, self.method, None)
        trajectory = ""
        for step in range(self.max_steps):
            text = self.llm.chat(
                self.messages(question, trajectory),
                max_tokens=self.step_max_tokens,
                temperature=self.temperature,
                stop=["Observation:", "\nQuestion:"],
            ).text.strip()
            trajectory += text + "\n"
            final = parse_final(text)
            actions = self.actions(text)
            if final is not None and (not actions or any(_FINISH.search(a) for a in actions)):
                result.answer = final[1]
                result.trace.append({"step": step, "llm": text, "finish": final[1]})
                break
            observations = self._act(actions, result)
            trajectory += "".join(f"Observation: {o}\n" for o in observations)
            result.trace.append({"step": step, "llm": text, "observation": "\n".join(observations)})
        else:
            result.errors.append(f"no Finish(...) within max_steps={self.max_steps}")
        result.latency_s = time.perf_counter() - start
        usage.fill(result)
        return result

    def _act(self, actions: list[str], result: AgentResult) -> list[str]:
        """Submit every action of the turn (they run concurrently), then wait for each: observations in order."""
        if not actions:
            result.errors.append("no 'Action:' line")
            return ["Invalid: write 'Action: tool(arguments)' or 'Action: Finish(answer)'."]
        pending = [self._submit(action, result) for action in actions]
        observations = []
        for tool, future in pending:
            if tool is None:  # rejected before running: the message says why
                observations.append(future)
                continue
            observed = resolve(future)
            if not observed.ok:
                result.errors.append(f"{tool} failed: {observed.error}")
            observations.append(str(observed))
        return observations

    def _submit(self, action: str, result: AgentResult) -> tuple[str | None, object]:
        try:
            tool, args, kwargs = parse_call(action)
        except ValueError as err:
            result.errors.append(f"malformed action {action!r}: {err}")
            return None, f"Invalid action {action!r}: {err}"
        if tool not in self.tools:
            result.errors.append(f"unknown tool {tool!r}")
            return None, f"Invalid action: unknown tool {tool!r}; use one of {', '.join(self.tools)} or Finish."
        result.tool_calls += 1
        return tool, self.submit(tool, args, kwargs)


class ParallelFunctionCalling(ReActAgent):
    """OpenAI-style parallel function calling, the paper's second baseline: each turn the model writes
    every call it can make now; they run in parallel; all results come back before the next turn.
    Dependent calls wait for a later turn (one LLM round trip per wave of the plan), and values are
    copied from observations (no `$N`). Nothing is dispatched until the turn's text is complete, as
    with a function-calling API's `tool_calls`."""

    method = "parallel_fc"

    def messages(self, question: str, trajectory: str):
        return parallel_fc_messages(question, list(self.tools.values()), trajectory, self.examples)

    @staticmethod
    def actions(text: str) -> list[str]:
        return [m.group(1).strip() for m in _ACTION.finditer(text)]


def _strip_thought(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if not ln.lower().startswith("thought")]
    return " ".join(lines).strip()


def _render_call(record: TaskRecord) -> str:
    """The call as executed (with $N replaced), which a small model reads more easily."""
    t = record.task
    if not record.submitted:
        return t.render()
    return Task(t.idx, t.tool, record.call_args, record.call_kwargs).render()


def _record_dict(r: TaskRecord) -> dict:
    return {
        "idx": r.task.idx,
        "tool": r.task.tool,
        "args": list(r.task.args),
        "deps": list(r.task.deps),
        "call_args": [str(a) for a in r.call_args],
        "parsed_at": r.parsed_at,
        "dispatched_at": r.dispatched_at,
        "finished_at": r.finished_at,
        "observation": None if r.result is None else str(r.result),
        "ok": None if r.result is None else r.result.ok,
    }
