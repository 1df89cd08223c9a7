"""The ranking benchmark's protocol (benchmarks/coscientist.py): schedules are chosen on tuning seeds
by a fixed rule, and tau is reported on disjoint held-out seeds."""

import pytest

from benchmarks.coscientist import (
    HELDOUT_SEEDS,
    PREVIOUS_DEFAULT,
    TUNING_SEEDS,
    first_budget_reaching,
    keeps_paper_priorities,
    schedule_candidates,
    select_schedule,
    spread,
)
from components.coscientist.elo import EloConfig


def test_tuning_and_heldout_seeds_are_disjoint():
    all_tuning = set().union(*map(set, TUNING_SEEDS.values()))
    for seeds in HELDOUT_SEEDS.values():
        assert not set(seeds) & all_tuning and len(seeds) >= 10


def test_tuning_candidates_surround_the_configured_schedule():
    candidates = schedule_candidates()
    assert EloConfig() in candidates.values() and PREVIOUS_DEFAULT in candidates.values()
    assert keeps_paper_priorities(EloConfig())
    differing = [
        sum(getattr(e, k) != getattr(EloConfig(), k) for k in ("debate_turns", "top_k", "w_top", "debate_min_matches"))
        for e in candidates.values()
    ]
    assert differing.count(0) == 1 and differing.count(1) >= 4  # the configured one and its one-step neighbours


def _row(tau: float, elo: EloConfig) -> dict:
    return {"tau": {"mean": tau}, "keeps_paper_priorities": keeps_paper_priorities(elo)}


def test_selection_takes_the_best_tau_among_schedules_that_keep_the_papers_priorities():
    rows = {
        "no_top_priority": _row(0.90, EloConfig(w_top=0.0)),
        "no_debates": _row(0.88, EloConfig(top_k=0)),
        "good": _row(0.84, EloConfig()),
        "worse": _row(0.80, PREVIOUS_DEFAULT),
    }
    assert select_schedule(rows) == "good"
    with pytest.raises(ValueError):
        select_schedule({"no_debates": rows["no_debates"]})


def test_spread_and_first_budget_reaching_the_goal():
    s = spread([0.7, 0.8, 0.9, 0.8], goal=0.8)
    assert s["mean"] == pytest.approx(0.8) and s["ci95"][0] < 0.8 < s["ci95"][1]
    assert s["frac_ge_goal"] == pytest.approx(0.75) and s["min"] == 0.7
    rows = [
        {"budget_calls": b, "tau": {"mean": m, "ci95": [m - 0.05, m + 0.05]}}
        for b, m in ((60, 0.6), (120, 0.78), (240, 0.82), (360, 0.9))
    ]
    assert first_budget_reaching(rows, lambda tau: tau["mean"]) == 240
    assert first_budget_reaching(rows, lambda tau: tau["ci95"][0]) == 360
    assert first_budget_reaching(rows[:2], lambda tau: tau["mean"]) is None
