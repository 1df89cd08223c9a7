"""The Task Fetching Unit: never starts a task before its dependencies, runs independent ones at once,
starts tasks while the plan is still streaming, and turns failures into observations."""

import threading
import time

from components.compiler.fetching import TaskFetchingUnit, ThreadSubmit
from components.compiler.plan import StreamingPlanParser, iter_tasks, parse_plan
from components.tools.base import Tool, Toolbox, ToolResult
from components.tools.calculator import evaluate

TOOLS = ["search", "calculate", "python"]


class RecordingTools:
    """Tools that log start/end events; `search` blocks until released so overlap is observable."""

    def __init__(self, expected_parallel: int = 0) -> None:
        self.events: list[tuple[str, int | str]] = []
        self.lock = threading.Lock()
        self.barrier = threading.Barrier(expected_parallel, timeout=10) if expected_parallel else None
        self.active = 0
        self.max_active = 0

    def _search(self, query):
        with self.lock:
            self.events.append(("start", query))
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        if self.barrier:  # all independent searches must be running at the same moment to pass
            self.barrier.wait()
        with self.lock:
            self.active -= 1
            self.events.append(("end", query))
        return ToolResult(value=len(query), text=f"{query} has {len(query)} letters")

    def _calculate(self, expression):
        with self.lock:
            self.events.append(("start", expression))
            self.events.append(("end", expression))

        value = evaluate(expression)
        return ToolResult(value=value, text=str(value))

    def toolbox(self) -> Toolbox:
        return Toolbox([Tool("search", "search(q)", self._search), Tool("calculate", "calculate(e)", self._calculate)])


def test_independent_tasks_run_concurrently_and_dependents_wait():
    tools = RecordingTools(expected_parallel=3)
    submit = ThreadSubmit(tools.toolbox())
    plan = 'search("aa")\nsearch("bbbb")\nsearch("c")\ncalculate("$1 + $2 + $3")\njoin()'
    plan = "\n".join(f"{i}. {line}" for i, line in enumerate(plan.splitlines(), 1))
    records = TaskFetchingUnit(submit).run(iter(parse_plan(plan, TOOLS)))
    submit.close()
    assert tools.max_active == 3  # the barrier only opens when all three searches are in flight
    assert records[4].call_args == ("2 + 4 + 1",) and records[4].result.value == 7
    ends = {name: i for i, (kind, name) in enumerate(tools.events) if kind == "end"}
    start_calc = tools.events.index(("start", "2 + 4 + 1"))
    assert all(ends[q] < start_calc for q in ("aa", "bbbb", "c"))  # never before its dependencies
    for record in records.values():
        for dep in record.task.deps:
            assert records[dep].finished_at <= record.dispatched_at


def test_chain_runs_in_order_with_values_substituted():
    tools = RecordingTools()
    toolbox = tools.toolbox()
    submit = ThreadSubmit(toolbox)
    plan = '1. search("abc")\n2. calculate("$1 * 10")\n3. calculate("$2 + $1")\n4. join()'
    records = TaskFetchingUnit(submit).run(iter(parse_plan(plan, TOOLS)))
    submit.close()
    assert [records[i].result.value for i in (1, 2, 3)] == [3, 30, 33]
    assert records[3].call_args == ("30 + 3",)
    assert records[4].dispatched_at >= records[3].finished_at  # join waits for everything


def test_tasks_start_while_the_plan_is_still_streaming():
    started = threading.Event()

    def search(query):
        started.set()
        return ToolResult(value=1, text="1")

    submit = ThreadSubmit(Toolbox([Tool("search", "search(q)", search)]))
    seen_before_second_line = []

    def slow_stream():
        yield '1. search("first")\n'
        # The second line is only written once the first task has begun: without streaming
        # dispatch this wait would time out.
        seen_before_second_line.append(started.wait(timeout=10))
        yield '2. search("second")\n3. join()\n'

    records = TaskFetchingUnit(submit).run(iter_tasks(slow_stream(), StreamingPlanParser(TOOLS)))
    submit.close()
    assert seen_before_second_line == [True]
    assert records[1].dispatched_at < records[2].parsed_at


def test_failures_become_observations_and_dependents_are_skipped():
    def broken(query):
        raise RuntimeError("backend down")

    submit = ThreadSubmit(
        Toolbox(
            [
                Tool("search", "search(q)", broken),
                Tool("calculate", "calculate(e)", lambda e: ToolResult(value=1, text="1")),
            ]
        )
    )
    plan = '1. search("x")\n2. calculate("$1 + 1")\n3. calculate("2")\n4. join()'
    records = TaskFetchingUnit(submit).run(iter(parse_plan(plan, TOOLS)))
    submit.close()
    assert "backend down" in records[1].result.error
    assert "skipped: depends on $1" in records[2].result.error
    assert records[3].result.ok


def test_planner_crash_mid_stream_still_finishes_dispatched_tasks():
    submit = ThreadSubmit(Toolbox([Tool("search", "search(q)", lambda q: ToolResult(value=q, text=q))]))

    def stream():
        yield '1. search("kept")\n'
        raise ConnectionError("stream broke")

    fetcher = TaskFetchingUnit(submit)
    records = fetcher.run(iter_tasks(stream(), StreamingPlanParser(TOOLS)))
    submit.close()
    assert records[1].result.value == "kept"
    assert isinstance(fetcher.plan_error, ConnectionError)


def test_submit_returning_plain_values_and_latency_is_respected():
    calls = []

    def submit(tool, args, kwargs):  # synchronous executor: returns the result itself
        calls.append((tool, args))
        return ToolResult(value=2, text="2")

    start = time.perf_counter()
    records = TaskFetchingUnit(submit).run(iter(parse_plan('1. search("a")\n2. search("$1")\n3. join()', TOOLS)))
    assert time.perf_counter() - start < 5
    assert calls == [("search", ("a",)), ("search", (2,))] and records[2].result.ok
