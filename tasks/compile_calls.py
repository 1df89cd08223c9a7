"""Prefect side of LLMCompiler: every dispatched tool call is a Prefect task on the flow's runner.

The Task Fetching Unit (components/compiler) takes a `submit(tool, args, kwargs)` callable; here it
is `call_tool.submit`, so each call is a task run (retried on infrastructure errors, visible in the
Prefect UI) that runs on threads or on Dask workers as `runner=` says. The tools are rebuilt from
their (picklable) config once per worker process. Planner and joiner LLM calls stay in the flow's
process: the planner streams into the fetching unit, which a task boundary would cut.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from components.tools import Toolbox, ToolResult, build_toolbox


@dataclass
class ToolsConfig:
    """The offline tools and their latencies (a latency stands for a remote API's round trip)."""

    kb_seed: int = 0  # which invented knowledge base (entities and numbers) to search
    search_latency_s: float = 0.5  # a web/Wikipedia search takes ~0.3-1 s; the paper's tools are remote
    calculate_latency_s: float = 0.05  # local arithmetic: near-instant
    python_latency_s: float = 0.0  # the sandbox's own start-up (~0.2 s) is real latency already
    python_wall_s: float = 10.0  # a snippet is killed past this


def toolbox_for(tools_cfg: ToolsConfig) -> Toolbox:
    """One toolbox per process and config (knowledge base built once)."""
    return _toolbox(tuple(sorted(asdict(tools_cfg).items())))


@functools.lru_cache(maxsize=8)
def _toolbox(items: tuple) -> Toolbox:
    c = ToolsConfig(**dict(items))
    return build_toolbox(
        c.kb_seed, c.search_latency_s, c.calculate_latency_s, c.python_latency_s, python_wall_seconds=c.python_wall_s
    )


# NO_CACHE: a repeated call (the same search in two questions) must really run: latency is measured.
@task(name="tool-call", task_run_name="{tool}", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE)
def call_tool(tool: str, args: tuple, kwargs: dict, tools_cfg: dict) -> ToolResult:
    """One tool call of a plan (or of a ReAct step). Tool errors come back as results; only
    infrastructure failures raise (and are retried once)."""
    return toolbox_for(ToolsConfig(**tools_cfg)).call(tool, tuple(args), dict(kwargs))


def prefect_submit(tools_cfg: ToolsConfig):
    """The `submit` the fetching unit and ReAct use inside the flow: a Prefect task per call."""
    cfg = asdict(tools_cfg)

    def submit(tool: str, args: tuple, kwargs: dict) -> Any:
        return call_tool.submit(tool, args, kwargs, cfg)

    return submit


def warm_up(tools_cfg: ToolsConfig, calls: int) -> None:
    """Start the runner's workers and build the tools there before anything is timed (task runs
    named `warm-up`): a fresh Dask cluster otherwise charges its start-up to the first question."""
    cfg = asdict(tools_cfg)
    warm = call_tool.with_options(task_run_name="warm-up")
    for future in [warm.submit("calculate", ("1 + 1",), {}, cfg) for _ in range(calls)]:
        future.result()


def tool_descriptions(tools_cfg: ToolsConfig) -> dict[str, str]:
    return {name: t.description for name, t in toolbox_for(tools_cfg).tools.items()}
