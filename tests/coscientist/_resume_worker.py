"""Runs a co-scientist tournament on the synthetic task against a state file; the resume test
starts it in a subprocess, kills it mid-run, and resumes the same state in-process."""

import sys
from pathlib import Path

from components.coscientist.agents import AgentSuite
from components.coscientist.proximity import Proximity, ProximityConfig
from components.coscientist.state import TournamentState
from components.coscientist.supervisor import Budget, Supervisor, SupervisorConfig
from components.coscientist.synthetic import SyntheticLLM, SyntheticScience

GOAL = "raise the yield of the reaction"
BUDGET_CALLS = 90


def run(state_path: Path, latency_s: float) -> dict:
    llm = SyntheticLLM(SyntheticScience(0), judge_noise=0.2, latency_s=latency_s, restate_rate=0.2)
    state = TournamentState(state_path, GOAL)
    sup = Supervisor(
        state,
        AgentSuite(llm, GOAL),
        Proximity(ProximityConfig(backend="tfidf")),
        Budget(calls=BUDGET_CALLS),
        SupervisorConfig(max_parallel=3, initial_hypotheses=6),
    )
    summary = sup.run()
    state.close()
    return summary


if __name__ == "__main__":
    run(Path(sys.argv[1]), float(sys.argv[2]))
