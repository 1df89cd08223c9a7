"""`coscientist`: generate, review, debate (Elo), evolve and de-duplicate research hypotheses under
a compute budget (Towards an AI co-scientist, Google 2025). The supervisor's asynchronous queue
runs each agent call as a Prefect task; state persists in SQLite so a stopped run resumes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial

from components.checks import at_least
from components.coscientist.agents import AgentSettings, AgentSpec, agent_suite
from components.coscientist.elo import EloConfig
from components.coscientist.proximity import Proximity, ProximityConfig
from components.coscientist.report import run_metrics
from components.coscientist.state import TournamentState, set_aside, state_path
from components.coscientist.supervisor import Budget, FutureBridge, Supervisor, SupervisorConfig
from components.llm.base import log_llm_usage
from components.llm.config import LLMConfig
from mlsys.flow import FlowConfig, system_flow
from mlsys.tracking import Tracker
from tasks.coscientist import agent_call, write_report


@dataclass
class CoscientistConfig(FlowConfig):
    goal: str = (
        "Propose a mechanism by which gut microbiome composition could influence the efficacy "
        "of immune checkpoint inhibitors, and how to test it."
    )  # the research goal (paper: a scientist's prompt)
    constraints: str = ""  # e.g. "must be testable in mice within 6 months"
    prior_ideas: list[str] = field(default_factory=list)  # the scientist's own ideas, shown to Generation
    llm: LLMConfig = field(default_factory=LLMConfig)
    agents: AgentSettings = field(default_factory=AgentSettings)
    budget: Budget = field(default_factory=Budget)
    elo: EloConfig = field(default_factory=EloConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    proximity: ProximityConfig = field(default_factory=ProximityConfig)
    state_file: str | None = None  # SQLite state; null: <work_dir>/coscientist/<goal hash>-seed<seed>.sqlite
    resume: bool = True  # continue the saved state of this goal (the budget counts all spent so far); false: start over
    report_top: int = 10  # hypotheses shown in the report

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("report_top", self.report_top, 1)


# The paper's claim this flow's summary metric measures (the suite's table, the run's summary).
CLAIM = "an Elo tournament of debated hypotheses ranks the better ones first: the top rises above 1200"
MEASURED = "{matches:.0f} matches, top Elo {top_elo:.0f} (spread {elo_spread:.0f})"  # how a run's metrics answer it


@system_flow("coscientist", CoscientistConfig, summary_metric="top_elo", order=60, claim=CLAIM, measured=MEASURED)
def coscientist(cfg: CoscientistConfig, tracker: Tracker) -> dict[str, float]:
    """Generate, debate and evolve hypotheses in an Elo tournament under a compute budget."""
    state = _open_state(cfg, tracker)
    spec = AgentSpec(cfg.goal, cfg.constraints, list(cfg.prior_ideas), cfg.agents, cfg.llm, str(cfg.work_path()))
    llm, proximity = agent_suite(spec).llm, Proximity(cfg.proximity)
    usage_before = llm.usage.as_dict()  # the LLM is cached per process: log this run's share
    summary, ranking, wall = _play_tournament(cfg, tracker, state, spec, proximity)
    # Called, not submitted: the report reads the state file and reuses the loaded embedder, both of
    # which live in this process (a Dask worker could have neither).
    write_report(state, proximity, cfg.goal, summary, tracker, cfg.report_top)
    if cfg.runner._target_.endswith("thread_runner"):  # workers share this process's LLM (Dask: their own)
        log_llm_usage(tracker, llm, since=usage_before)
    state.close()
    return {**run_metrics(summary, ranking, cfg.elo.initial), "wall_s": wall}


def _open_state(cfg: CoscientistConfig, tracker: Tracker) -> TournamentState:
    """The tournament's state file: resumed, or a fresh one with the earlier file set aside (never lost)."""
    path = state_path(cfg.work_path("coscientist"), cfg.goal, cfg.seed, cfg.state_file)
    if not cfg.resume and (moved := set_aside(path)):
        tracker.set_tags({"coscientist.previous_state": str(moved)})
    state = TournamentState(path, cfg.goal, cfg.elo)
    tracker.set_tags({"coscientist.state_file": str(path), "coscientist.resumed_tasks": state.spent()["tasks"]})
    return state


def _play_tournament(cfg: CoscientistConfig, tracker: Tracker, state, spec, proximity):
    """The supervisor's loop, every agent call a Prefect task: (summary, ranking, wall seconds)."""
    started = time.perf_counter()
    with FutureBridge(partial(agent_call.submit, spec), cfg.supervisor.max_parallel) as submit:
        supervisor = Supervisor(
            state, agent_suite(spec), proximity, cfg.budget, cfg.supervisor, cfg.elo, submit=submit, seed=cfg.seed
        )
        supervisor.on_commit = lambda *_: tracker.log_metrics(supervisor.progress(), step=state.spent()["tasks"])
        summary = supervisor.run()
    return summary, supervisor.ranking(), time.perf_counter() - started
