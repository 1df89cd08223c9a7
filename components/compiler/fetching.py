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

    def run(self, tasks: Iterable[Task], known: dict[int, ToolResult] | None = None) -> dict[int, TaskRecord]:
        """Dispatch `tasks` (consumed on a helper thread, as the planner produces them) as their
        dependencies finish; return a record per task once the plan has ended and every task is done.
        `known`: results of earlier rounds that `$N` may refer to."""
        start = time.perf_counter()
        now = lambda: time.perf_counter() - start  # noqa: E731
        events: queue.Queue = queue.Queue()
        finished: dict[int, ToolResult] = dict(known or {})
        records: dict[int, TaskRecord] = {}
        waiting: list[int] = []  # parsed, not yet dispatched, in plan order
        in_flight = 0
        plan_ended = False
        plan_error: BaseException | None = None

        def produce() -> None:
            try:
                for task in tasks:
                    events.put(("task", task))
            except BaseException as err:  # the planner failed (LLM error): finish what was dispatched
                events.put(("plan_error", err))
            finally:
                events.put(("plan_end", None))

        threading.Thread(target=produce, name="plan-stream", daemon=True).start()

        def await_result(idx: int, handle: Any) -> None:
            try:
                result = resolve(handle)
            except BaseException as err:  # e.g. a cancelled future: the loop must still hear back
                result = ToolResult(error=f"{type(err).__name__}: {err}")
            events.put(("done", (idx, result)))

        def dispatch_ready() -> None:
            nonlocal in_flight
            for idx in list(waiting):
                record = records[idx]
                task = record.task
                if not all(d in finished for d in task.deps):
                    continue
                waiting.remove(idx)
                record.dispatched_at = now()
                failed = [d for d in task.deps if not finished[d].ok]
                if task.is_join:
                    record.finished_at = record.dispatched_at
                    continue
                if failed:  # no point calling a tool with an error message as its input
                    self._finish(
                        record, ToolResult(error=f"skipped: depends on ${failed[0]}, which failed"), finished, now()
                    )
                    continue
                values = {d: finished[d].value for d in task.deps}
                record.call_args = substitute(task.args, values, render_observation)
                record.call_kwargs = substitute(task.kwargs, values, render_observation)
                try:
                    handle = self.submit(task.tool, record.call_args, record.call_kwargs)
                except BaseException as err:
                    self._finish(
                        record, ToolResult(error=f"could not dispatch: {type(err).__name__}: {err}"), finished, now()
                    )
                    continue
                record.submitted = True
                in_flight += 1
                threading.Thread(target=await_result, args=(idx, handle), daemon=True, name=f"await-task-{idx}").start()

        while not plan_ended or in_flight or waiting:
            if plan_ended and not in_flight and waiting:
                dispatch_ready()
                if not in_flight and waiting:  # can only happen with a dependency that never came
                    for idx in waiting:
                        self._finish(records[idx], ToolResult(error="never became ready"), finished, now())
                    waiting.clear()
                continue
            kind, payload = events.get()
            if kind == "task":
                records[payload.idx] = TaskRecord(payload, parsed_at=now())
                waiting.append(payload.idx)
            elif kind == "done":
                idx, result = payload
                in_flight -= 1
                self._finish(records[idx], result, finished, now())
            elif kind == "plan_error":
                plan_error = payload
            elif kind == "plan_end":
                plan_ended = True
            dispatch_ready()
        self.plan_error = plan_error
        return records

    @staticmethod
    def _finish(record: TaskRecord, result: ToolResult, finished: dict, at: float) -> None:
        record.result = result
        record.finished_at = at
        finished[record.task.idx] = result
