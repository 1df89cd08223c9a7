"""Prefect side of LLMCompiler: every dispatched tool call is a Prefect task on the flow's runner.

The Task Fetching Unit (components/compiler) takes a `submit(tool, args, kwargs)` callable; the flow
hands it `partial(call_tool.submit, tools=cfg.tools)`, so each call is a task run (retried on
infrastructure errors, visible in the Prefect UI) that runs on threads or on Dask workers as
`runner=` says. The tools are rebuilt from their (picklable) config once per worker process.
Planner and joiner LLM calls stay in the flow's process: the planner streams into the fetching
unit, which a task boundary would cut.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from components.tools import ToolResult, ToolsConfig, toolbox_for


# NO_CACHE: a repeated call (the same search in two questions) must really run: latency is measured.
@task(name="tool-call", task_run_name="{tool}", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE)
def call_tool(tool: str, args: tuple, kwargs: dict, tools: ToolsConfig) -> ToolResult:
    """One tool call of a plan (or of a ReAct step). Tool errors come back as results; only
    infrastructure failures raise (and are retried once)."""
    return toolbox_for(tools).call(tool, tuple(args), dict(kwargs))
