"""Agent output parsing, and malformed output handled without crashing the tournament."""

import re

import pytest

from components.coscientist.agents import AgentSuite, Work, parse_hypothesis, parse_review, parse_verdict, render
from components.coscientist.elo import EloConfig
from components.llm.base import ScriptedLLM


@pytest.mark.parametrize(
    "text,expected",
    [
        ("REASON: sharper mechanism.\nBETTER: 2", 2),
        ("better: **1**", 1),
        ("BETTER: Hypothesis 2", 2),
        ("After weighing both, hypothesis 1 is better.", 1),
        ("Both are interesting.", None),
        ("BETTER: 1 ... actually BETTER: 2", None),  # contradicts itself
        ("BETTER: maybe", None),
        ("", None),
    ],
)
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


def test_parse_hypothesis_and_review():
    assert (
        parse_hypothesis("HYPOTHESIS: Bacteria X raise PD-1 response via butyrate.\n\nExtra")
        == "Bacteria X raise PD-1 response via butyrate."
    )
    assert parse_hypothesis("Bacteria X raise PD-1 response via butyrate.") is not None  # no marker: kept
    assert parse_hypothesis("HYPOTHESIS: ok") is None  # too short to be a hypothesis
    review, malformed = parse_review("CORRECTNESS: 4\nNOVELTY: 2\nTESTABILITY: 5\nVERDICT: reject\nCRITIQUE: vague.")
    assert (
        review
        == {"scores": {"correctness": 4, "novelty": 2, "testability": 5}, "verdict": "reject", "critique": "vague."}
        and not malformed
    )
    review, malformed = parse_review("I like it a lot")
    assert malformed and review["verdict"] == "accept"  # fail open: the tournament still judges it


def test_prompts_render_from_files_and_name_missing_fields():
    text = render("ranking_single", goal="g", hypothesis_1="h1", hypothesis_2="h2", review_1="r1", review_2="r2")
    assert "Hypothesis 1: h1" in text and "BETTER: <1 or 2>" in text
    with pytest.raises(KeyError, match="review_2"):
        render("ranking_single", goal="g", hypothesis_1="h1", hypothesis_2="h2", review_1="r1")


def test_debate_makes_turns_plus_one_calls_and_malformed_verdict_gives_no_winner():
    llm = ScriptedLLM(["ARGUMENT: one", "ARGUMENT: two", "ARGUMENT: three", "no idea which"])
    suite = AgentSuite(llm, "goal")
    work = Work(
        "rank",
        "rank-00001",
        {"a": "H1", "b": "H2", "text_a": "x", "text_b": "y", "debate": True, "turns": 3},
        estimated_calls=4,
    )
    result = suite.run(work)
    assert result.calls == 4 and result.malformed and result.output["winner"] is None
    assert "Advocate of 2: ARGUMENT: two" in llm.requests[2][0]["content"]  # the transcript reaches later turns


def test_default_debate_gives_both_advocates_the_same_number_of_turns():
    turns = EloConfig().debate_turns
    llm = ScriptedLLM([f"ARGUMENT: point {i}" for i in range(turns)] + ["BETTER: 2"])
    work = Work(
        "rank",
        "rank-00002",
        {"a": "H1", "b": "H2", "text_a": "x", "text_b": "y", "debate": True, "turns": turns},
        estimated_calls=turns + 1,
    )
    result = AgentSuite(llm, "goal").run(work)
    sides = [re.search(r"advocate of hypothesis (\d)", r[-1]["content"]).group(1) for r in llm.requests[:turns]]
    assert sides.count("1") == sides.count("2") > 0  # neither side gets the last word for free
    assert result.output["winner"] == "H2" and result.calls == turns + 1


def test_empty_goal_and_unknown_work_kind_are_refused():
    with pytest.raises(ValueError, match="goal"):
        AgentSuite(ScriptedLLM(["x"]), "  ")
    with pytest.raises(ValueError, match="unknown work kind 'dance'"):
        Work("dance", "t", {})
