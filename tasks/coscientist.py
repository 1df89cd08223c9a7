"""Prefect tasks of the co-scientist: one agent call per task, and the report.

The supervisor (components/coscientist/supervisor.py) stays orchestrator-free: it is handed
`prefect_submit(...)`, which runs each agent call as the Prefect task `agent_call` on the flow's
task runner (threads with runner=local, Dask workers with runner=dask) and hands back a plain
concurrent.futures.Future. The LLM is built inside the task from its picklable config, once per
process, so Dask workers load their own model instead of receiving a pickled one.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from components.coscientist.agents import AgentResult, AgentSuite, Work
from components.coscientist.report import build_report
from tasks.llm import LLMConfig, build_llm

_suites: dict[str, AgentSuite] = {}
_suites_lock = threading.Lock()


@dataclass
class AgentSpec:
    """Everything a worker needs to play the agents: the goal and the LLM's config (picklable)."""

    goal: str
    constraints: str = ""
    prior_ideas: list[str] = field(default_factory=list)
    max_tokens: int = 256
    temperature: float = 0.7
    llm: LLMConfig = field(default_factory=LLMConfig)
    base_dir: str | None = None  # where a relative llm.cache_dir lands


def agent_suite(spec: AgentSpec) -> AgentSuite:
    """The AgentSuite for `spec` in this process (built once: the embedded model loads once)."""
    key = repr(asdict(spec))
    with _suites_lock:
        if key not in _suites:
            llm = build_llm(spec.llm, base_dir=spec.base_dir)
            _suites[key] = AgentSuite(
                llm, spec.goal, spec.constraints, spec.prior_ideas, spec.max_tokens, spec.temperature
            )
        return _suites[key]


def _run_name() -> str:
    from prefect.runtime import task_run

    work = task_run.parameters.get("work")
    return f"{work.kind}:{work.task_id}" if work is not None else "agent_call"


@task(cache_policy=NO_CACHE, task_run_name=_run_name)
def agent_call(spec: AgentSpec, work: Work) -> AgentResult:
    """One agent's work (a generation, a review, a match or debate, an evolution, a meta-review)."""
    return agent_suite(spec).run(work)


def prefect_submit(spec: AgentSpec, max_parallel: int):
    """A `submit(work) -> concurrent.futures.Future` for the Supervisor that runs `agent_call`
    on the flow's task runner; a small pool of waiter threads turns Prefect futures into plain ones."""
    waiters = cf.ThreadPoolExecutor(max_parallel, thread_name_prefix="cosci-wait")

    def submit(work: Work) -> cf.Future:
        prefect_future = agent_call.submit(spec, work)
        return waiters.submit(prefect_future.result)

    submit.close = lambda: waiters.shutdown(wait=True)  # type: ignore[attr-defined]
    return submit


@task(cache_policy=NO_CACHE)
def write_report(state, proximity, goal: str, summary: dict, tracker, top_n: int = 10) -> dict[str, Any]:
    """Build the markdown + HTML report and log it, the ranking and the Elo plot to MLflow."""
    report = build_report(state, proximity, goal, summary, top_n)
    tracker.log_text(report.markdown, "report/report.md")
    tracker.log_text(report.html, "report/report.html")
    tracker.log_figure(report.figure, "report/elo_history.png")
    tracker.log_dict(
        {"ranking": report.ranking, "clusters": report.clusters, "summary": summary}, "report/ranking.json"
    )
    return {"top": report.ranking[:3], "clusters": len(report.clusters)}
