"""Task records (query + gold) for the SQL and Bash environments, written for this project.

SQL: 64 tasks over the four databases of databases.py, 16 each, labelled with Spider's hardness
levels (easy: one table, no grouping; medium: grouping/ordering or one join; hard: nested queries,
HAVING, anti-joins; extra: several joins with grouping, subqueries or limits).
Bash: 46 NL2Bash-style tasks over the three fixtures of filesystems.py, labelled easy (one command),
medium (a pipeline or one change) and hard (several steps or a computed change).
Where a task asks for an order, the query says so, ties included, since the SQL reward scores order.
The records are task_records/{sql,bash}_tasks.jsonl, one JSON object a line in the format of a user's
task file (user_tasks.py): id, hardness, db or fixture, query, gold.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

RECORDS_DIR = Path(__file__).with_name("task_records")


@dataclass(frozen=True)
class Task:
    id: str
    query: str  # the natural-language instruction the agent sees
    gold: str  # the reference solution: a SQL query, or a bash command line
    hardness: str
    db: Optional[str] = None  # SQL: which database
    fixture: Optional[str] = None  # Bash: which file system

    def as_dict(self) -> dict:
        return asdict(self)


def _load(name: str) -> list[Task]:
    lines = (RECORDS_DIR / name).read_text(encoding="utf-8").splitlines()
    return [Task(**json.loads(line)) for line in lines if line.strip()]


SQL_TASKS: list[Task] = _load("sql_tasks.jsonl")
BASH_TASKS: list[Task] = _load("bash_tasks.jsonl")

TASK_SETS: dict[str, list[Task]] = {"sql": SQL_TASKS, "bash": BASH_TASKS}


def select_tasks(
    tasks: list[Task], limit: int | None = None, task_ids: list[str] | None = None, seed: int = 0
) -> list[int]:
    """Indices of the tasks to run: the named ids, else `limit` tasks spread evenly over the hardness
    levels (round-robin, seeded order within a level), else all."""
    if task_ids:
        index = {t.id: i for i, t in enumerate(tasks)}
        unknown = [t for t in task_ids if t not in index]
        if unknown:
            raise KeyError(f"unknown task ids {unknown}; ids look like {tasks[0].id!r}")
        return [index[t] for t in task_ids]
    if limit is None or limit >= len(tasks):
        return list(range(len(tasks)))
    if limit < 1:
        raise ValueError(f"tasks_per_env must be at least 1, got {limit}")
    levels: dict[str, list[int]] = {}
    for i, t in enumerate(tasks):
        levels.setdefault(t.hardness, []).append(i)
    rng = random.Random(seed)
    for members in levels.values():
        rng.shuffle(members)
    order = [levels[h] for h in sorted(levels)]
    chosen: list[int] = []
    while len(chosen) < limit:
        for members in order:
            if members and len(chosen) < limit:
                chosen.append(members.pop(0))
    return sorted(chosen)
