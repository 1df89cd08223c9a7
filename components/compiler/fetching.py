"""The Task Fetching Unit: dispatches every task whose dependencies are done, `$N` substituted.

Tasks arrive while the planner is still writing (an iterator that yields each task as its line
completes); the unit dispatches a task the moment it is both parsed and ready, so tool calls
overlap with planning and with each other. It is orchestrator-free: the `submit(tool, args, kwargs)`
callable it is given decides where a call runs (a thread pool here and in tests; a Prefect task on
the flow's task runner in the flow) and returns either a future with `.result()` or the result.
`submit` is always called from the thread that called `run`, so orchestrators that keep their run
context in thread-local/contextvars state (Prefect does) see it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from components.compiler.plan import Task, substitute
from components.tools.base import Toolbox, ToolResult

Submit = Callable[[str, tuple, dict], Any]


class ThreadSubmit:
    """Runs tool calls on a local thread pool: the executor used without an orchestrator."""

    def __init__(self, toolbox: Toolbox, max_workers: int = 8) -> None:
        self.toolbox = toolbox
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="tool")

    def __call__(self, tool: str, args: tuple, kwargs: dict):
        return self._pool.submit(self.toolbox.call, tool, args, kwargs)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@dataclass
class TaskRecord:
    """What happened to one task, with times in seconds since `run` started."""

    task: Task
    parsed_at: float
    dispatched_at: float | None = None
    finished_at: float | None = None
    call_args: tuple = ()  # after $N substitution
    call_kwargs: dict = field(default_factory=dict)
    submitted: bool = False  # handed to `submit` (not a join, not skipped)
    result: ToolResult | None = None


def resolve(handle: Any) -> ToolResult:
    """The ToolResult behind whatever `submit` returned (a future or the result itself); a failed
    call becomes an error observation the agent reads, not an exception."""
    try:
        result = handle.result() if hasattr(handle, "result") else handle
    except Exception as err:
        return ToolResult(error=f"{type(err).__name__}: {err}")
    return result if isinstance(result, ToolResult) else ToolResult(value=result, text=str(result))


def render_observation(value: Any) -> str:
    """How a `$N` inside a longer string shows task N's value: numbers without float noise."""
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)


class TaskFetchingUnit:
    def __init__(self, submit: Submit) -> None:
        self.submit = submit
        self.plan_error: BaseException | None = None

    def run(self, tasks: Iterable[Task], known: dict[int, ToolResult] | None = None) -> dict[int, TaskRecord]:
        """Dispatch `tasks` (consumed on a helper thread, as the planner produces them) as their
        dependencies finish; return a record per task once the plan has ended and every task is done.
        `known`: results of earlier rounds that `$N` may refer to."""
        dispatch = _Dispatch(self.submit, known)
        threading.Thread(target=dispatch.read_plan, args=(tasks,), name="plan-stream", daemon=True).start()
        while not dispatch.plan_ended or dispatch.in_flight or dispatch.waiting:
            if dispatch.plan_ended and not dispatch.in_flight and dispatch.waiting:
                dispatch.finish_stragglers()
                continue
            dispatch.handle(*dispatch.events.get())
            dispatch.dispatch_ready()
        self.plan_error = dispatch.plan_error
        return dispatch.records


class _Dispatch:
    """One `TaskFetchingUnit.run`: the event queue its helper threads feed, and the tasks' records."""

    def __init__(self, submit: Submit, known: dict[int, ToolResult] | None) -> None:
        self.submit = submit
        self.start = time.perf_counter()
        self.events: queue.Queue = queue.Queue()
        self.finished: dict[int, ToolResult] = dict(known or {})
        self.records: dict[int, TaskRecord] = {}
        self.waiting: list[int] = []  # parsed, not yet dispatched, in plan order
        self.in_flight = 0
        self.plan_ended = False
        self.plan_error: BaseException | None = None

    def now(self) -> float:
        return time.perf_counter() - self.start

    def read_plan(self, tasks: Iterable[Task]) -> None:
        """On the plan-stream thread: every task the planner yields becomes an event."""
        try:
            for task in tasks:
                self.events.put(("task", task))
        except BaseException as err:  # the planner failed (LLM error): finish what was dispatched
            self.events.put(("plan_error", err))
        finally:
            self.events.put(("plan_end", None))

    def await_result(self, idx: int, handle: Any) -> None:
        """On a waiter thread: the call's result becomes an event."""
        try:
            result = resolve(handle)
        except BaseException as err:  # e.g. a cancelled future: the loop must still hear back
            result = ToolResult(error=f"{type(err).__name__}: {err}")
        self.events.put(("done", (idx, result)))

    def handle(self, kind: str, payload: Any) -> None:
        if kind == "task":
            self.records[payload.idx] = TaskRecord(payload, parsed_at=self.now())
            self.waiting.append(payload.idx)
        elif kind == "done":
            idx, result = payload
            self.in_flight -= 1
            self.finish(self.records[idx], result)
        elif kind == "plan_error":
            self.plan_error = payload
        elif kind == "plan_end":
            self.plan_ended = True

    def dispatch_ready(self) -> None:
        for idx in list(self.waiting):
            if all(d in self.finished for d in self.records[idx].task.deps):
                self.waiting.remove(idx)
                self.dispatch(self.records[idx])

    def dispatch(self, record: TaskRecord) -> None:
        """Submit one ready task (`$N` substituted); a join ends here, a task on a failed input is skipped."""
        task = record.task
        record.dispatched_at = self.now()
        failed = [d for d in task.deps if not self.finished[d].ok]
        if task.is_join:
            record.finished_at = record.dispatched_at
            return
        if failed:  # no point calling a tool with an error message as its input
            self.finish(record, ToolResult(error=f"skipped: depends on ${failed[0]}, which failed"))
            return
        values = {d: self.finished[d].value for d in task.deps}
        record.call_args = substitute(task.args, values, render_observation)
        record.call_kwargs = substitute(task.kwargs, values, render_observation)
        try:
            handle = self.submit(task.tool, record.call_args, record.call_kwargs)
        except BaseException as err:
            self.finish(record, ToolResult(error=f"could not dispatch: {type(err).__name__}: {err}"))
            return
        record.submitted = True
        self.in_flight += 1
        name = f"await-task-{task.idx}"
        threading.Thread(target=self.await_result, args=(task.idx, handle), daemon=True, name=name).start()

    def finish_stragglers(self) -> None:
        """The plan has ended and nothing is in flight: dispatch what is ready; what is still
        waiting depends on a task that never came."""
        self.dispatch_ready()
        if not self.in_flight and self.waiting:
            for idx in self.waiting:
                self.finish(self.records[idx], ToolResult(error="never became ready"))
            self.waiting.clear()

    def finish(self, record: TaskRecord, result: ToolResult) -> None:
        record.result = result
        record.finished_at = self.now()
        self.finished[record.task.idx] = result
