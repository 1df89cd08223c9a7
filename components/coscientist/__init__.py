"""AI co-scientist (Google, 2025): generate, review, debate (Elo), evolve, de-duplicate and
meta-review research hypotheses under a supervisor with a compute budget and persistent state.

Orchestrator-free: the supervisor takes a `submit(work) -> Future` callable, so the same code runs
on a thread pool, on Prefect tasks or on Dask workers.
"""

from components.coscientist.agents import AgentSuite
from components.coscientist.elo import EloConfig, expected_score, update_elo
from components.coscientist.proximity import Proximity, ProximityConfig
from components.coscientist.state import TournamentState
from components.coscientist.supervisor import Budget, Supervisor, SupervisorConfig

__all__ = [
    "AgentSuite",
    "Budget",
    "EloConfig",
    "Proximity",
    "ProximityConfig",
    "Supervisor",
    "SupervisorConfig",
    "TournamentState",
    "expected_score",
    "update_elo",
]
