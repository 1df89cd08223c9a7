"""The supervisor: budget, priorities, malformed output and failing agents (no orchestrator)."""

from pathlib import Path

import pytest

from components.coscientist.agents import AgentSuite
from components.coscientist.elo import EloConfig
from components.coscientist.proximity import Proximity, ProximityConfig
from components.coscientist.report import build_report, elo_history
from components.coscientist.state import TournamentState
from components.coscientist.supervisor import Budget, Supervisor, SupervisorConfig, WorkWeights
from components.coscientist.synthetic import SyntheticLLM, SyntheticScience

GOAL = "raise the yield of the reaction"


def make(
    tmp_path: Path,
    budget: Budget,
    llm=None,
    cfg: SupervisorConfig | None = None,
    elo: EloConfig | None = None,
    name: str = "state.sqlite",
    **llm_kwargs,
) -> tuple[Supervisor, TournamentState, SyntheticLLM]:
    llm = llm or SyntheticLLM(SyntheticScience(0), **llm_kwargs)
    state = TournamentState(tmp_path / name, GOAL)
    sup = Supervisor(
        state,
        AgentSuite(llm, GOAL),
        Proximity(ProximityConfig(backend="tfidf")),
        budget,
        cfg or SupervisorConfig(max_parallel=3, initial_hypotheses=5),
        elo,
    )
    return sup, state, llm


def test_call_budget_is_never_exceeded_even_with_debates(tmp_path):
    sup, state, llm = make(tmp_path, Budget(calls=70), elo=EloConfig(top_k=4, debate_min_matches=1))
    summary = sup.run()
    assert summary["spent"]["calls"] <= 70 and llm.usage.calls == summary["spent"]["calls"]
    assert summary["spent"]["calls"] >= 70 - EloConfig().debate_turns  # and it is actually spent
    assert summary["debates"] > 0


def test_token_budget_stops_the_run(tmp_path):
    sup, state, llm = make(tmp_path, Budget(calls=None, tokens=6000))
    summary = sup.run()
    spent = summary["spent"]["tokens"]
    per_call = spent / summary["spent"]["calls"]
    # Work is issued only while it fits: overshoot is bounded by the calls already in flight.
    assert 6000 - 2 * per_call <= spent <= 6000 + 3 * 2 * per_call
    assert llm.usage.total_tokens == spent


def test_new_hypotheses_are_generated_then_reviewed_before_they_are_ranked(tmp_path):
    sup, state, _ = make(tmp_path, Budget(calls=80), cfg=SupervisorConfig(max_parallel=1, initial_hypotheses=5))
    sup.run()
    kinds = state.task_kinds_in_order()
    assert kinds[0] == "generate"
    assert kinds.index("rank") > kinds.index("reflect")
    reviewed_at = {}
    rows = state.db.execute("SELECT task_id, finished_seq FROM tasks WHERE kind='reflect'").fetchall()
    for r in state.db.execute("SELECT r.hypothesis_id, t.finished_seq FROM reviews r JOIN tasks t USING(task_id)"):
        reviewed_at[r["hypothesis_id"]] = r["finished_seq"]
    assert rows
    for m in state.matches():  # a hypothesis enters a match only after its review was committed
        assert reviewed_at[m["a"]] < m["seq"] and reviewed_at[m["b"]] < m["seq"]
    # New hypotheses are prioritised: every active one reviewed before the last few tasks has been matched.
    last_seq = int(state.get_meta("seq"))
    early = [h for h in state.hypotheses(statuses=("active",)) if reviewed_at[h["id"]] < last_seq - 20]
    assert len(early) >= 5 and all(h["matches"] > 0 for h in early)


def test_weights_decide_the_share_of_work(tmp_path):
    only_rank = SupervisorConfig(
        max_parallel=2, initial_hypotheses=6, weights=WorkWeights(generate=0, rank=1, evolve=0, meta_review=0)
    )
    sup, state, _ = make(tmp_path, Budget(calls=60), cfg=only_rank)
    sup.run()
    counts = state.task_counts()
    assert counts["generate"]["done"] == 6 and "evolve" not in counts and "meta_review" not in counts
    rank_calls = state.db.execute("SELECT SUM(calls) FROM tasks WHERE kind='rank'").fetchone()[0]
    assert rank_calls >= 60 - 12 - 3  # all but the 6 generations and 6 reviews (and a debate's rounding)
    evolve_heavy = SupervisorConfig(
        max_parallel=2,
        initial_hypotheses=6,
        meta_review_every=5,
        weights=WorkWeights(generate=0, rank=1, evolve=3, meta_review=1),
    )
    sup, state, _ = make(tmp_path, Budget(calls=60), cfg=evolve_heavy, name="b.sqlite")
    sup.run()
    counts = state.task_counts()
    assert counts["evolve"]["done"] > 5 and counts["meta_review"]["done"] >= 1
    # Meta-review feedback reaches the later prompts.
    assert state.latest_feedback()


def test_malformed_verdicts_void_the_match_and_leave_ratings_alone(tmp_path):
    sup, state, llm = make(tmp_path, Budget(calls=80), malformed_rate=0.5)
    summary = sup.run()
    void = [m for m in state.matches() if m["winner"] is None]
    assert summary["void_matches"] == len(void) > 0
    assert all(m["elo_a_after"] == m["elo_a_before"] and m["elo_b_after"] == m["elo_b_before"] for m in void)
    decided = {h["id"]: 0 for h in state.hypotheses()}
    for m in state.matches():
        if m["winner"] is not None:
            decided[m["a"]] += 1
            decided[m["b"]] += 1
    assert all(h["matches"] == decided[h["id"]] for h in state.hypotheses())
    assert summary["spent"]["malformed"] >= len(void)


class FlakyLLM(SyntheticLLM):
    """Raises on every `fail_every`-th call, as an unreachable endpoint would."""

    def __init__(self, fail_every: int, **kw):
        super().__init__(SyntheticScience(0), **kw)
        self.fail_every, self.n = fail_every, 0

    def _chat(self, messages, max_tokens, temperature, stop):
        with self._lock:
            self.n += 1
            n = self.n
        if self.fail_every and n % self.fail_every == 0:
            raise ConnectionError("endpoint unreachable")
        return super()._chat(messages, max_tokens, temperature, stop)


def test_failing_agent_calls_are_recorded_and_the_run_goes_on(tmp_path):
    sup, state, _ = make(tmp_path, Budget(calls=40), llm=FlakyLLM(fail_every=7))
    summary = sup.run()
    assert summary["tasks"]["generate"]["done"] >= 5
    failed = state.db.execute("SELECT COUNT(*) FROM tasks WHERE status='failed'").fetchone()[0]
    assert failed >= 3 and summary["spent"]["calls"] <= 40


def test_an_endpoint_that_always_fails_stops_the_run_with_a_clear_error(tmp_path):
    sup, state, _ = make(
        tmp_path,
        Budget(calls=40),
        llm=FlakyLLM(fail_every=1),
        cfg=SupervisorConfig(max_parallel=1, max_consecutive_failures=3),
    )
    with pytest.raises(RuntimeError, match="3 agent calls failed in a row.*unreachable"):
        sup.run()
    assert state.db.execute("SELECT COUNT(*) FROM tasks WHERE status='failed'").fetchone()[0] == 3


def test_budget_and_state_validation(tmp_path):
    with pytest.raises(ValueError, match="both are null"):
        Budget(calls=None, tokens=None)
    with pytest.raises(ValueError, match="budget.calls must be positive"):
        Budget(calls=0)
    TournamentState(tmp_path / "s.sqlite", "goal one").close()
    with pytest.raises(ValueError, match="belongs to another goal"):
        TournamentState(tmp_path / "s.sqlite", "goal two")


def test_report_lists_top_hypotheses_with_reviews_history_and_clusters(tmp_path):
    sup, state, _ = make(tmp_path, Budget(calls=40))
    summary = sup.run()
    report = build_report(state, sup.proximity, GOAL + " <script>", summary, top_n=3)
    top = sup.ranking()[0]
    assert report.ranking[0]["id"] == top["id"] and f"1. {top['id']}" in report.markdown
    assert state.reviews()[top["id"]]["critique"] in report.markdown
    assert "&lt;script&gt;" in report.html and "<script>" not in report.html  # goal text is escaped
    assert sorted(sum(report.clusters, [])) == sorted(h["id"] for h in state.hypotheses(statuses=("active",)))
    history = elo_history(state)
    assert history[top["id"]][-1][1] == pytest.approx(top["elo"])  # the plot ends at the final rating
