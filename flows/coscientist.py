"""`coscientist`: generate, review, debate (Elo), evolve and de-duplicate research hypotheses under
a compute budget (Towards an AI co-scientist, Google 2025). The supervisor's asynchronous queue
runs each agent call as a Prefect task; state persists in SQLite so a stopped run resumes."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from components.checks import at_least
from components.coscientist.elo import EloConfig
from components.coscientist.proximity import Proximity, ProximityConfig
from components.coscientist.state import TournamentState
from components.coscientist.supervisor import Budget, Supervisor, SupervisorConfig
from mlsys.flow import FlowConfig, system_flow
from tasks.coscientist import AgentSpec, agent_suite, prefect_submit, write_report
from tasks.llm import LLMConfig


@dataclass
class AgentSettings:
    max_tokens: int = 160  # one hypothesis paragraph or one verdict; SmolLM2 runs ~14 tok/s on 2 cores
    temperature: float = 0.7  # some diversity between generations; verdicts are parsed, not sampled twice

    def __post_init__(self) -> None:
        at_least("agents.max_tokens", self.max_tokens, 1)
        at_least("agents.temperature", self.temperature, 0)


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
    resume: bool = True  # continue the saved state of this goal; false: set it aside (renamed) and start over
    report_top: int = 10  # hypotheses shown in the report

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("report_top", self.report_top, 1)


def state_path(cfg: CoscientistConfig) -> Path:
    if cfg.state_file:
        path = Path(cfg.state_file)
        return path if path.is_absolute() else cfg.work_path("coscientist") / path
    digest = hashlib.sha256(cfg.goal.strip().encode()).hexdigest()[:12]
    return cfg.work_path("coscientist") / f"{digest}-seed{cfg.seed}.sqlite"


def _set_aside(path: Path) -> Path | None:
    """resume=false keeps the old state under a new name: nothing saved is lost."""
    if not path.exists():
        return None
    moved = path.with_name(f"{path.stem}.{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}")
    path.rename(moved)
    for suffix in ("-wal", "-shm"):
        side = Path(str(path) + suffix)
        if side.exists():
            side.rename(Path(str(moved) + suffix))
    return moved


@system_flow(
    name="coscientist",
    config=CoscientistConfig,
    summary_metric="top_elo",
    order=60,
)
def coscientist(cfg: CoscientistConfig, tracker) -> dict[str, float]:
    """Generate, debate and evolve hypotheses in an Elo tournament under a compute budget."""
    path = state_path(cfg)
    if not cfg.resume and (moved := _set_aside(path)):
        tracker.set_tags({"coscientist.previous_state": str(moved)})
    state = TournamentState(path, cfg.goal, cfg.elo)
    resumed_tasks = state.spent()["tasks"]
    tracker.set_tags({"coscientist.state_file": str(path), "coscientist.resumed_tasks": resumed_tasks})
    spec = AgentSpec(
        cfg.goal,
        cfg.constraints,
        list(cfg.prior_ideas),
        cfg.agents.max_tokens,
        cfg.agents.temperature,
        cfg.llm,
        str(cfg.work_path()),
    )
    proximity = Proximity(cfg.proximity)
    submit = prefect_submit(spec, cfg.supervisor.max_parallel)
    usage_before = agent_suite(spec).llm.usage.as_dict()  # the LLM is cached per process: log this run's share
    started = time.perf_counter()

    def log_progress(work, result, effect) -> None:
        spent = state.spent()
        active = state.hypotheses(statuses=("active",))
        tracker.log_metrics(
            {
                "spent_calls": spent["calls"],
                "spent_tokens": spent["tokens"],
                "hypotheses": len(state.hypotheses()),
                "active": len(active),
                "top_elo": max((h["elo"] for h in active), default=cfg.elo.initial),
            },
            step=spent["tasks"],
        )

    supervisor = Supervisor(
        state,
        agent_suite(spec),
        proximity,
        cfg.budget,
        cfg.supervisor,
        cfg.elo,
        submit=submit,
        on_commit=log_progress,
        seed=cfg.seed,
    )
    try:
        summary = supervisor.run()
    finally:
        submit.close()
    wall = time.perf_counter() - started
    # Called, not submitted: the report reads the state file and reuses the loaded embedder, both of
    # which live in this process (a Dask worker could have neither).
    write_report(state, proximity, cfg.goal, summary, tracker, cfg.report_top)
    if cfg.runner._target_.endswith("thread_runner"):  # workers share this process's LLM (Dask: their own)
        usage = agent_suite(spec).llm.usage.as_dict()
        tracker.log_metrics({f"llm.{k}": v - usage_before.get(k, 0) for k, v in usage.items()})
    ranking = supervisor.ranking()
    state.close()
    spent = summary["spent"]
    return {
        "top_elo": ranking[0]["elo"] if ranking else cfg.elo.initial,
        "hypotheses": summary["hypotheses"],
        "active_hypotheses": summary["by_status"].get("active", 0),
        "duplicates": summary["by_status"].get("duplicate", 0),
        "matches": summary["matches"],
        "debates": summary["debates"],
        "void_matches": summary["void_matches"],
        "llm_calls": spent["calls"],
        "tokens": spent["tokens"],
        "malformed_outputs": spent["malformed"],
        "wall_s": wall,
    }
