"""Prefect tasks of the co-scientist: one agent call per task, and the report.

The supervisor (components/coscientist/supervisor.py) stays orchestrator-free: the flow hands it
`FutureBridge(partial(agent_call.submit, spec), ...)`, so each agent call runs as the Prefect task
`agent_call` on the flow's task runner (threads with runner=local, Dask workers with runner=dask).
The LLM is built inside the task from its picklable config, once per process.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run

from components.coscientist.agents import AgentResult, AgentSpec, Work, agent_suite
from components.coscientist.proximity import Proximity
from components.coscientist.report import build_report
from components.coscientist.state import TournamentState
from mlsys.tracking import Tracker


def _run_name() -> str:
    work = task_run.parameters.get("work")
    return f"{work.kind}:{work.task_id}" if work is not None else "agent_call"


@task(cache_policy=NO_CACHE, task_run_name=_run_name)
def agent_call(spec: AgentSpec, work: Work) -> AgentResult:
    """One agent's work (a generation, a review, a match or debate, an evolution, a meta-review)."""
    return agent_suite(spec).run(work)


@task(cache_policy=NO_CACHE)
def write_report(
    state: TournamentState, proximity: Proximity, goal: str, summary: dict, tracker: Tracker, top_n: int = 10
) -> dict[str, Any]:
    """Build the markdown + HTML report and log it, the ranking and the Elo plot to MLflow."""
    report = build_report(state, proximity, goal, summary, top_n)
    tracker.log_text(report.markdown, "report/report.md")
    tracker.log_text(report.html, "report/report.html")
    tracker.log_figure(report.figure, "report/elo_history.png")
    tracker.log_dict(
        {"ranking": report.ranking, "clusters": report.clusters, "summary": summary}, "report/ranking.json"
    )
    return {"top": report.ranking[:3], "clusters": len(report.clusters)}
