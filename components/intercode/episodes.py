"""Which episodes a run plays, and the fresh environment each one is played in.

An episode is one task in one environment: a built-in task (spread over hardness levels, or named by
id) over the assets of `assets.prepare`, or a task of a user's task file over the user's databases and
fixtures. Every episode gets an environment of its own (its own sandbox workspaces), so episodes can
run in parallel and on other machines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from components.intercode.env import BashEnv, InterCodeEnv, SqlEnv
from components.intercode.sql_server import ServerSqlEnv
from components.intercode.tasksets import TASK_SETS, Task, select_tasks
from components.intercode.user_tasks import load_task_file
from components.sandbox import Sandbox, SandboxLimits

DATA_FOLDERS = {"sql": "databases", "bash": "filesystems"}  # where assets.prepare writes each environment's data


@dataclass(frozen=True)
class EpisodeSpec:
    kind: str  # the environment: sql | bash
    task: Task
    data_dir: str  # the folder of the task's database (<db>.sqlite) or fixture (a folder)


def check_envs(envs: list[str]) -> None:
    unknown = [e for e in envs if e not in TASK_SETS]
    if unknown or not envs:
        raise ValueError(f"envs must name some of {sorted(TASK_SETS)}, got {envs}")


def builtin_episodes(
    envs: list[str], tasks_per_env: Optional[int], task_ids: list[str], seed: int, asset_dir: str | Path
) -> list[EpisodeSpec]:
    """The built-in tasks named in `task_ids` (those of `envs`), else `tasks_per_env` of each environment."""
    check_envs(envs)
    episodes = []
    for kind in envs:
        ids = [t for t in task_ids if t.startswith(kind + "-")] if task_ids else None
        if task_ids and not ids:
            continue
        data_dir = str(Path(asset_dir) / DATA_FOLDERS[kind])
        for index in select_tasks(TASK_SETS[kind], tasks_per_env, ids, seed):
            episodes.append(EpisodeSpec(kind, TASK_SETS[kind][index], data_dir))
    if not episodes:
        raise ValueError(f"no task selected: task_ids={task_ids} match none of envs={envs}")
    return episodes


def user_episodes(
    task_file: str,
    envs: list[str],
    task_ids: list[str],
    db_dir: Optional[str] = None,
    fixture_dir: Optional[str] = None,
) -> list[EpisodeSpec]:
    """One episode per task of the user's file (those named in task_ids, if any), in its environments;
    databases and fixtures are looked up in db_dir / fixture_dir (default: the task file's folder)."""
    check_envs(envs)
    user_tasks = load_task_file(task_file, db_dir, fixture_dir)
    every_id = {t.id for kind in user_tasks for t in user_tasks[kind]}
    missing = [t for t in task_ids if t not in every_id]
    if missing:
        raise ValueError(f"task_ids {missing} are not in task_file {task_file}")
    folder = Path(task_file).expanduser().resolve().parent
    dirs = {
        "sql": str(Path(db_dir).expanduser().resolve()) if db_dir else str(folder),
        "bash": str(Path(fixture_dir).expanduser().resolve()) if fixture_dir else str(folder),
    }
    return [
        EpisodeSpec(kind, task, dirs[kind])
        for kind in envs
        for task in user_tasks[kind]
        if not task_ids or task.id in task_ids
    ]


def episode_env(
    episode: EpisodeSpec, sandbox: SandboxLimits, sql_server_url: Optional[str] = None, sql_order: str = "upstream"
) -> InterCodeEnv:
    """A fresh environment holding the episode's task alone (index 0); SQL on the database server at
    `sql_server_url` when given (built-in tasks only), else every action in a sandbox with `sandbox`."""
    tasks = [episode.task]
    if episode.kind == "sql" and sql_server_url:
        return ServerSqlEnv(tasks, sql_server_url, sql_order=sql_order)
    if episode.kind == "sql":
        return SqlEnv(tasks, Path(episode.data_dir), Sandbox(sandbox), sql_order=sql_order)
    if episode.kind == "bash":
        return BashEnv(tasks, Path(episode.data_dir), Sandbox(sandbox))
    raise ValueError(f"unknown InterCode environment {episode.kind!r}: use 'sql' or 'bash'")
