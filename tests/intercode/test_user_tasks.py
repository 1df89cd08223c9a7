"""Bring your own InterCode tasks: a user's JSON-lines task file, SQLite databases and Bash fixtures;
hostile files are refused with the file, the line and the field."""

from __future__ import annotations

import json
import sqlite3

import pytest

from components.intercode import fsdiff
from components.intercode.episodes import user_episodes
from components.intercode.user_tasks import TaskFileError, load_task_file
from components.sandbox import isolation_mode
from mlsys.flow import compose, run

GOOD_SQL = {"id": "q1", "query": "How many users?", "gold": "SELECT COUNT(*) FROM users", "db": "shop"}
GOOD_BASH = {"id": "b1", "query": "Count the .txt files in docs", "gold": "ls docs | wc -l", "fixture": "home"}


@pytest.fixture
def material(tmp_path):
    con = sqlite3.connect(tmp_path / "shop.sqlite")
    con.execute("CREATE TABLE users (id INTEGER, name TEXT)")
    con.executemany("INSERT INTO users VALUES (?, ?)", [(1, "ann"), (2, "bob"), (3, "cy")])
    con.commit()
    con.close()
    (tmp_path / "home" / "docs").mkdir(parents=True)
    for name in ("a.txt", "b.txt"):
        (tmp_path / "home" / "docs" / name).write_text(name)
    return tmp_path


def write(folder, *lines) -> str:
    path = folder / "tasks.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return str(path)


def test_task_file_with_databases_and_fixtures_loads(material):
    path = write(material, "# a comment", json.dumps(GOOD_SQL), "", {**GOOD_BASH, "hardness": "easy"})
    tasks = load_task_file(path)
    assert [t.id for t in tasks["sql"]] == ["q1"] and tasks["sql"][0].db == "shop"
    assert tasks["bash"][0].fixture == "home" and tasks["bash"][0].hardness == "easy"
    assert tasks["sql"][0].hardness == "user"


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"id": "q1", "query": "x", "gold": ', r"line 2: not valid JSON"),
        ('["q1", "x"]', r"line 2: expected a JSON object, got list"),
        ({"id": "q2", "gold": "SELECT 1", "db": "shop"}, r"line 2: missing field 'query'"),
        (
            {"id": "q2", "query": 7, "gold": "SELECT 1", "db": "shop"},
            r"line 2: field 'query' must be a string, got int 7",
        ),
        (
            {"id": "q2", "query": "x", "gold": ["SELECT 1"], "db": "shop"},
            r"line 2: field 'gold' must be a string, got list",
        ),
        ({"id": "q2", "qurey": "x", "gold": "SELECT 1", "db": "shop"}, r"line 2: unknown field 'qurey'"),
        (
            {"id": "q1", "query": "x", "gold": "SELECT 1", "db": "shop"},
            r"line 2: field 'id': 'q1' is already used on line 1",
        ),
        (
            {"id": "q2", "query": "x", "gold": "SELECT 1"},
            r"line 2: give exactly one of field 'db' \(SQL\) or 'fixture'",
        ),
        ({"id": "q2", "query": "x", "gold": "ls", "db": "shop", "fixture": "home"}, r"line 2: give exactly one of"),
        (
            {"id": "q2", "query": "x", "gold": "SELECT 1", "db": "../../etc/passwd"},
            r"line 2: field 'db'.*not a plain name",
        ),
        (
            {"id": "q2", "query": "x", "gold": "SELECT 1", "db": "missing"},
            r"line 2: field 'db': database file .*missing"
            r"\.sqlite does not exist",
        ),
        (
            {"id": "q2", "query": "x", "gold": "ls", "fixture": "nowhere"},
            r"line 2: field 'fixture': fixture folder .*"
            r"nowhere does not exist",
        ),
        ({"id": "q2", "query": "  ", "gold": "ls", "fixture": "home"}, r"line 2: field 'query' is empty"),
    ],
)
def test_hostile_task_files_name_file_line_and_field(material, line, message):
    path = write(material, GOOD_SQL, line)
    with pytest.raises(TaskFileError, match=message) as caught:
        load_task_file(path)
    assert str(caught.value).startswith(str(material / "tasks.jsonl"))


def test_files_that_are_not_task_files(material):
    (material / "fake.sqlite").write_text("CREATE TABLE t (x);")
    with pytest.raises(TaskFileError, match="fake.sqlite is not an SQLite database"):
        load_task_file(write(material, {**GOOD_SQL, "db": "fake"}))
    (material / "tasks.jsonl").write_bytes(b'{"id": "\xff"}\n')
    with pytest.raises(TaskFileError, match="not UTF-8"):
        load_task_file(material / "tasks.jsonl")
    with pytest.raises(TaskFileError, match="no tasks"):
        load_task_file(write(material, "# only a comment"))
    with pytest.raises(TaskFileError, match="does not exist"):
        load_task_file(material / "absent.jsonl")


def test_fixture_too_deep_is_refused_before_any_episode(material):
    (material / "deep" / "a" / "b" / "c").mkdir(parents=True)
    with pytest.raises(TaskFileError, match=r"line 1: field 'fixture': .*deep: workspace too deep"):
        load_task_file(write(material, {**GOOD_BASH, "fixture": "deep"}), fixture_limits=fsdiff.WalkLimits(max_depth=2))


def test_databases_and_fixtures_in_their_own_folders(material, tmp_path_factory):
    tasks_folder = tmp_path_factory.mktemp("tasks_only")
    path = write(tasks_folder, GOOD_SQL, GOOD_BASH)
    with pytest.raises(TaskFileError, match="shop.sqlite does not exist"):
        load_task_file(path)
    tasks = load_task_file(path, db_dir=material, fixture_dir=material)
    assert len(tasks["sql"]) == len(tasks["bash"]) == 1


def test_bad_task_file_fails_at_composition(material, flow_overrides):
    path = write(material, GOOD_SQL, {"id": "q2", "query": 1, "gold": "x", "db": "shop"})
    with pytest.raises(Exception, match=r"tasks.jsonl, line 2: field 'query' must be a string"):
        compose("intercode", flow_overrides + [f"task_file={path}"])
    with pytest.raises(Exception, match="db_dir.*only used with task_file"):
        compose("intercode", flow_overrides + [f"db_dir={material}"])
    with pytest.raises(Exception, match="sql_reward_order"):
        compose("intercode", flow_overrides + ["sql_reward_order=sorted"])


@pytest.mark.skipif(isolation_mode() is None, reason="needs the namespace sandbox")
def test_flow_plays_a_users_task_file(material, prefect_harness, flow_overrides):
    wrong = {"id": "q3", "query": "Names in order", "gold": "SELECT name FROM users ORDER BY name", "db": "shop"}
    path = write(material, GOOD_SQL, GOOD_BASH, wrong)
    result = run(compose("intercode", flow_overrides + ["ic_policy=gold", f"task_file={path}"]))
    assert result["metrics"]["episodes"] == 3.0 and result["metrics"]["success_rate"] == 1.0
    assert result["metrics"]["sql.success_rate"] == 1.0 and result["metrics"]["bash.success_rate"] == 1.0


def test_task_ids_and_envs_pick_from_a_users_task_file(material, flow_overrides):
    def episodes_of(cfg):
        return user_episodes(cfg.task_file, cfg.envs, cfg.task_ids, cfg.db_dir, cfg.fixture_dir)

    path = write(material, GOOD_SQL, GOOD_BASH, {**GOOD_SQL, "id": "q2"})
    cfg = compose("intercode", flow_overrides + [f"task_file={path}", "task_ids=[b1,q2]"])
    episodes = episodes_of(cfg)
    assert [(e.kind, e.task.id) for e in episodes] == [("sql", "q2"), ("bash", "b1")]
    assert episodes[0].data_dir == str(material) and episodes[1].data_dir == str(material)
    cfg = compose("intercode", flow_overrides + [f"task_file={path}", "envs=[bash]"])
    assert [e.task.id for e in episodes_of(cfg)] == ["b1"]
    cfg = compose("intercode", flow_overrides + [f"task_file={path}", "task_ids=[nope]"])
    with pytest.raises(ValueError, match=r"task_ids \['nope'\] are not in task_file"):
        episodes_of(cfg)
