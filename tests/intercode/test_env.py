"""The environments: every gold scores exactly 1, perturbed solutions less, reset restores state,
InterCode's submit/skip semantics, and agent actions stay inside the sandbox."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import pytest

from components.intercode.env import BashEnv, SqlEnv, make_env
from components.intercode.tasksets import BASH_TASKS, SQL_TASKS

PROJECT = Path(__file__).resolve().parents[2]


def test_task_sets_are_large_and_varied():
    assert len(SQL_TASKS) >= 60 and len({t.db for t in SQL_TASKS}) >= 3
    assert {t.hardness for t in SQL_TASKS} == {"easy", "medium", "hard", "extra"}
    assert len(BASH_TASKS) >= 40 and len({t.fixture for t in BASH_TASKS}) >= 3
    assert len({t.id for t in SQL_TASKS + BASH_TASKS}) == len(SQL_TASKS) + len(BASH_TASKS)


def test_envs_are_gymnasium_envs(sql_env, bash_env):
    assert isinstance(sql_env, gym.Env) and isinstance(bash_env, gym.Env)
    query, info = sql_env.reset(options={"index": 0})
    assert query == SQL_TASKS[0].query and info["task_id"] == SQL_TASKS[0].id


@pytest.mark.parametrize("index", range(len(SQL_TASKS)), ids=[t.id for t in SQL_TASKS])
def test_every_sql_gold_scores_one_and_perturbed_less(sql_env, index):
    task = SQL_TASKS[index]
    sql_env.reset(index)
    observation, reward, terminated, truncated, info = sql_env.step(task.gold)
    assert info["action_executed"] and reward == 0.0 and not terminated and not truncated
    gold_rows = sql_env.gold_rows()
    assert gold_rows, "a gold with an empty result could not tell right from wrong"
    # perturbed answers (scored in place, without re-running: executing SQL is covered above)
    rows = list(sql_env.last_rows)
    for perturbed in (rows[:-1], rows + rows[:1], [r[:-1] + ("x",) for r in rows]):
        sql_env.last_rows = perturbed
        assert sql_env.evaluate()[0] < 1.0
    sql_env.last_rows = rows
    _, reward, terminated, _, _ = sql_env.step("submit")
    assert terminated and reward == 1.0


def test_perturbed_sql_actions_score_less(sql_env):
    for index in (4, 20, 44):  # one ordered, one grouped, one join: perturbed by executing them
        task = SQL_TASKS[index]
        sql_env.reset(index)
        sql_env.step(f"SELECT * FROM ({task.gold}) LIMIT {len(sql_env.gold_rows()) - 1}")
        assert sql_env.evaluate()[0] < 1.0
        sql_env.step(f"SELECT * FROM ({task.gold}) UNION ALL SELECT * FROM (SELECT * FROM ({task.gold}) LIMIT 1)")
        assert sql_env.evaluate()[0] < 1.0


@pytest.mark.parametrize("index", range(len(BASH_TASKS)), ids=[t.id for t in BASH_TASKS])
def test_every_bash_gold_scores_one_and_perturbed_less(bash_env, index):
    task = BASH_TASKS[index]
    bash_env.reset(index)
    _, _, _, _, info = bash_env.step(task.gold)
    assert info["action_executed"]
    gold = bash_env.gold_outcome()
    assert gold["output"].strip() or gold["changes"], "a gold with no effect could not tell right from wrong"
    _, reward, terminated, _, _ = bash_env.step("submit")
    assert terminated and reward == 1.0
    bash_env.reset(index)  # an extra output line and an extra file
    bash_env.step(f"{task.gold}; echo unexpected words; touch /testbed/zz_extra")
    reward, info = bash_env.evaluate()
    assert reward < 1.0 and ("zz_extra", "A") in info["extra_changes"]
    bash_env.reset(index)  # doing nothing: no output, no change
    assert bash_env.evaluate()[0] < 1.0


def test_sql_reset_restores_the_database(sql_env):
    sql_env.reset(0)  # "How many students are there?"
    _, _, _, _, info = sql_env.step("DROP TABLE students")
    assert info["action_executed"]
    assert "no such table" in sql_env.step("SELECT COUNT(*) FROM students")[0]
    sql_env.reset(0)
    sql_env.step(SQL_TASKS[0].gold)
    assert sql_env.step("submit")[1] == 1.0


def test_bash_reset_restores_files_and_directory(bash_env):
    bash_env.reset(0)
    bash_env.step("rm -rf /testbed/src /testbed/README.md && mkdir /testbed/junk")
    bash_env.step("cd /testbed/junk")
    assert bash_env.cwd == "/testbed/junk"
    assert bash_env.step("pwd")[0] == "/testbed/junk\n"
    bash_env.reset(0)
    assert bash_env.cwd == "/testbed"
    listing = bash_env.step("ls")[0].split()
    assert "src" in listing and "README.md" in listing and "junk" not in listing
    assert bash_env.evaluate()[1]["extra_changes"] == []


def test_submit_skip_and_misuse(sql_env):
    with pytest.raises(IndexError, match="out of range"):
        sql_env.reset(len(SQL_TASKS))
    sql_env.reset(1)
    observation, reward, terminated, _, info = sql_env.step("skip")
    assert terminated and reward == 0.0 and info["skipped"]
    with pytest.raises(RuntimeError, match="reset"):
        sql_env.step("SELECT 1")
    sql_env.reset(1)
    observation, _, _, _, info = sql_env.step("SELEC name FROM departments")
    assert not info["action_executed"] and observation.startswith("Error executing query")
    assert sql_env.step("submit")[1] == 0.0  # an error observation scores 0
    sql_env.reset(1)
    assert "departments" in sql_env.step("SHOW TABLES")[0]  # MySQL habits map to SQLite
    assert "budget" in sql_env.step("DESCRIBE departments")[0]


def test_hostile_actions_stay_in_the_sandbox(bash_env, sql_env):
    bash_env.reset(0)
    out = bash_env.step(
        f"cat {PROJECT}/pyproject.toml; echo pwned > {PROJECT}/pwned.txt; "
        "python3 -c \"import socket; socket.create_connection(('1.1.1.1', 80), timeout=2)\""
    )[0]
    assert "No such file or directory" in out and "Network is unreachable" in out
    assert not (PROJECT / "pwned.txt").exists()
    slow = bash_env.step("sleep 100")  # stopped by the sandbox's wall clock, reported in the observation
    assert "wall-clock timeout" in slow[0] and not slow[4]["action_executed"]
    sql_env.reset(0)
    out = sql_env.step(f"ATTACH DATABASE '{PROJECT}/evil.db' AS evil")[0]
    assert out.startswith("Error executing query") and not (PROJECT / "evil.db").exists()
    runaway = sql_env.step("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT COUNT(*) FROM n")
    assert "cpu time limit" in runaway[0] or "wall-clock" in runaway[0]


def test_missing_assets_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="school"):
        SqlEnv(SQL_TASKS[:1], tmp_path)
    with pytest.raises(FileNotFoundError, match="fs_project"):
        BashEnv(BASH_TASKS[:1], tmp_path)
    with pytest.raises(ValueError, match="unknown InterCode environment"):
        make_env("python", SQL_TASKS, tmp_path)


def test_server_backend_through_sqlalchemy(tmp_path):
    """The database-server path, exercised with SQLAlchemy's SQLite dialect (no server runs here)."""
    env = make_env("sql", SQL_TASKS, tmp_path, server_url=f"sqlite:///{tmp_path / 'server.db'}")
    try:
        for index in (0, 21, 47):
            env.reset(index)
            env.step(SQL_TASKS[index].gold)
            assert env.step("submit")[1] == 1.0
        env.reset(0)
        env.step("DROP TABLE students")
        env.step("CREATE TABLE agent_scratch (x INTEGER)")
        assert env.step("SELECT COUNT(*) FROM students")[0].startswith("Error executing query")
        env.reset(0)  # reloaded; the agent's own table is gone
        assert env.step("SELECT COUNT(*) FROM students")[0] == "[(40,)]"
        assert "agent_scratch" not in env.step("SELECT name FROM sqlite_master")[0]
    finally:
        env.close()
