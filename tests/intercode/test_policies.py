"""Policies drive the environments through the LLM interface (scripted responses: plumbing only)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from components.intercode.env import make_env
from components.intercode.metrics import summarize
from components.intercode.policies import (
    GoldReplay,
    PlanAndSolve,
    PolicyConfig,
    ReAct,
    SingleTurn,
    TryAgain,
    build_policy,
    extract_code,
)
from components.intercode.tasksets import BASH_TASKS, SQL_TASKS, select_tasks
from components.llm.base import ScriptedLLM

POLICIES = "components.intercode.policies"
CONF_POLICIES = Path(__file__).resolve().parents[2] / "conf" / "ic_policy"
CS_INSTRUCTORS = 5  # "List the names of the instructors of the Computer Science department."


def test_extract_code():
    assert extract_code("Sure:\n```sql\nSELECT 1\n```\nDone", "sql") == "SELECT 1"
    assert extract_code("```\nls -la\n```", "bash") == "ls -la"
    assert extract_code("SELECT name FROM t", "sql") == "SELECT name FROM t"
    assert extract_code("I would look at the tables first.", "sql") is None
    assert extract_code("ls /testbed", "bash") == "ls /testbed"
    assert extract_code("Let me think about it.", "bash") is None


def test_try_again_feeds_back_output_and_reward_and_stops_at_one(sql_env):
    gold = SQL_TASKS[CS_INSTRUCTORS].gold
    llm = ScriptedLLM(
        ["```sql\nSELECT name FROM instructors\n```", "no code, sorry.", f"```sql\n{gold}\n```", "never asked"]
    )
    episode = TryAgain(llm, max_turns=5).run(sql_env, CS_INSTRUCTORS)
    assert episode.error is None and episode.success and len(episode.turns) == 3
    assert [t.valid for t in episode.turns] == [True, False, True]
    assert 0 < episode.turns[0].reward < 1 and episode.invalid_fraction == pytest.approx(1 / 3)
    feedback = llm.requests[1][-1]["content"]
    assert "Reward: 0.25" in feedback and "Donald Knuth" in feedback  # 3 of 12 instructors, same order
    assert "No SQL code" in llm.requests[2][-1]["content"]


def test_single_turn_takes_one_shot(sql_env):
    episode = SingleTurn(ScriptedLLM(["```sql\nSELECT 1\n```"])).run(sql_env, 0)
    assert len(episode.turns) == 1 and episode.reward == 0.0 and episode.llm_calls == 1


def test_react_executes_then_submits_without_reward_feedback(sql_env):
    gold = SQL_TASKS[CS_INSTRUCTORS].gold
    llm = ScriptedLLM(
        [
            " I list the tables.\nAction 1: execute[SHOW TABLES]",
            f" Now the answer.\nAction 2: execute[{gold}]",
            " Done.\nAction 3: submit",
        ]
    )
    episode = ReAct(llm, max_turns=5).run(sql_env, CS_INSTRUCTORS)
    assert episode.success and len(episode.turns) == 2 and episode.turns[0].reward is None
    assert "Observation 1: [('courses',)" in llm.requests[1][-1]["content"]
    assert "Reward" not in llm.requests[2][-1]["content"]


def test_plan_and_solve_follows_its_plan(sql_env):
    gold = SQL_TASKS[CS_INSTRUCTORS].gold
    llm = ScriptedLLM(
        [
            "1. look at the instructors table\n2. join departments",
            "```sql\nDESCRIBE instructors\n```",
            f"```sql\n{gold}\n```",
        ]
    )
    episode = PlanAndSolve(llm).run(sql_env, CS_INSTRUCTORS)
    assert episode.plan == ["look at the instructors table", "join departments"]
    assert episode.success and [t.reward for t in episode.turns] == [0.0, 1.0]


def test_llm_failure_ends_only_the_episode(sql_env):
    episode = TryAgain(ScriptedLLM([]), max_turns=3).run(sql_env, 0)
    assert episode.error and "ran out" in episode.error and episode.reward == 0.0


def test_gold_replay_and_summary(asset_dir):
    env = make_env("bash", BASH_TASKS, asset_dir)
    try:
        indices = select_tasks(BASH_TASKS, 3)
        episodes = [GoldReplay().run(env, i).as_dict() for i in indices]
    finally:
        env.close()
    assert len({BASH_TASKS[i].hardness for i in indices}) == 3  # spread over hardness levels
    summary = summarize(episodes)
    assert summary["success_rate"] == 1.0 and summary["invalid_action_fraction"] == 0.0
    assert set(summary["by_hardness"]) == {"easy", "medium", "hard"}


def test_build_policy_names():
    assert build_policy(PolicyConfig(f"{POLICIES}.GoldReplay"), None).name == "gold"
    assert build_policy(PolicyConfig(max_turns=3), ScriptedLLM(["x"])).name == "try_again_3"
    assert build_policy(PolicyConfig(max_turns=1), ScriptedLLM(["x"])).name == "single_turn"
    with pytest.raises(ValueError, match="needs an LLM"):
        build_policy(PolicyConfig(f"{POLICIES}.ReAct"), None)
    with pytest.raises(ValueError, match="ic_policy._target_=.*Reflexion.*names no Policy class"):
        PolicyConfig(f"{POLICIES}.Reflexion")
    with pytest.raises(ValueError, match="names no Policy class"):
        PolicyConfig("components.intercode.env.SqlEnv")  # a class, but not a policy


def test_every_ic_policy_option_builds_its_policy():
    names = {}
    for option in sorted(CONF_POLICIES.glob("*.yaml")):
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PolicyConfig), OmegaConf.load(option)))
        names[option.stem] = build_policy(cfg, ScriptedLLM(["x"])).name
    assert names == {
        "gold": "gold",
        "plan_solve": "plan_solve",
        "react": "react",
        "single_turn": "single_turn",
        "try_again": "try_again_10",
    }


def test_extract_code_from_a_response_cut_at_max_tokens():
    assert extract_code("```bash\nls /testbed/docs | sort", "bash") == "ls /testbed/docs | sort"
    assert extract_code("```sql\nSELECT name\nFROM t", "sql") == "SELECT name\nFROM t"
    assert extract_code("```bash\n", "bash") is None  # a bare fence is no command
