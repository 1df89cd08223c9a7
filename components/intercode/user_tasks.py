"""A user's own InterCode tasks: a JSON-lines task file, SQLite databases and Bash fixture folders.

One JSON object per line (blank lines and lines starting with '#' are skipped):

    {"id": "q1", "query": "How many users?", "gold": "SELECT COUNT(*) FROM users", "db": "shop"}
    {"id": "b1", "query": "Count the .txt files", "gold": "find . -name '*.txt' | wc -l", "fixture": "home"}

`id`, `query` and `gold` are required strings; exactly one of `db` (SQL: the database
`<db_dir>/<db>.sqlite`) or `fixture` (Bash: the folder `<fixture_dir>/<fixture>`, copied fresh for
every episode) says which environment; `hardness` (a string) is optional. Every problem is reported as
a `TaskFileError` naming the file, the line and the field, before any episode runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

from components.intercode import fsdiff
from components.intercode.tasksets import Task

FIELDS = {"id": str, "query": str, "gold": str, "db": str, "fixture": str, "hardness": str}
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # a file or folder name, never a path
SQLITE_MAGIC = b"SQLite format 3\x00"


class TaskFileError(ValueError):
    """A problem in a user's task file or the databases/fixtures it names."""


def load_task_file(
    path: str | Path,
    db_dir: Optional[str | Path] = None,
    fixture_dir: Optional[str | Path] = None,
    fixture_limits: fsdiff.WalkLimits = fsdiff.WalkLimits(),
) -> dict[str, list[Task]]:
    """{"sql": [...], "bash": [...]} from the task file; `db_dir` / `fixture_dir` default to its folder."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise TaskFileError(f"task file {path} does not exist or is not a file")
    db_root = Path(db_dir).expanduser().resolve() if db_dir else path.parent
    fixture_root = Path(fixture_dir).expanduser().resolve() if fixture_dir else path.parent
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise TaskFileError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    tasks: dict[str, list[Task]] = {"sql": [], "bash": []}
    seen: dict[str, int] = {}
    checked_dbs: set[str] = set()
    checked_fixtures: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}, line {number}"
        record = _parse_record(line, where)
        if record["id"] in seen:
            raise TaskFileError(f"{where}: field 'id': {record['id']!r} is already used on line {seen[record['id']]}")
        seen[record["id"]] = number
        if ("db" in record) == ("fixture" in record):
            raise TaskFileError(f"{where}: give exactly one of field 'db' (SQL) or 'fixture' (Bash)")
        kind, field = ("sql", "db") if "db" in record else ("bash", "fixture")
        name = record[field]
        if not SAFE_NAME.fullmatch(name) or name in (".", ".."):
            raise TaskFileError(
                f"{where}: field {field!r}: {name!r} is not a plain name (letters, digits, '_', '-', '.'; no path)"
            )
        if kind == "sql" and name not in checked_dbs:
            _check_database(db_root / f"{name}.sqlite", where)
            checked_dbs.add(name)
        if kind == "bash" and name not in checked_fixtures:
            _check_fixture(fixture_root / name, where, fixture_limits)
            checked_fixtures.add(name)
        tasks[kind].append(
            Task(
                record["id"],
                record["query"],
                record["gold"],
                record.get("hardness", "user"),
                db=record.get("db"),
                fixture=record.get("fixture"),
            )
        )
    if not tasks["sql"] and not tasks["bash"]:
        raise TaskFileError(f"{path}: no tasks (one JSON object per line)")
    return tasks


def _parse_record(line: str, where: str) -> dict:
    """One line as a task record: a JSON object of known string fields, id, query and gold non-empty."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise TaskFileError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise TaskFileError(f"{where}: expected a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - set(FIELDS))
    if unknown:
        raise TaskFileError(f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(FIELDS)})")
    for field in ("id", "query", "gold"):
        if field not in record:
            raise TaskFileError(f"{where}: missing field {field!r}")
    for field, value in record.items():
        if not isinstance(value, FIELDS[field]):
            raise TaskFileError(
                f"{where}: field {field!r} must be a string, got {type(value).__name__} {json.dumps(value)[:60]}"
            )
    for field in ("id", "query", "gold"):
        if not record[field].strip():
            raise TaskFileError(f"{where}: field {field!r} is empty")
    return record


def _check_database(file: Path, where: str) -> None:
    if not file.is_file():
        raise TaskFileError(
            f"{where}: field 'db': database file {file} does not exist (databases are <db>.sqlite files in db_dir)"
        )
    with open(file, "rb") as handle:
        if handle.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
            raise TaskFileError(f"{where}: field 'db': {file} is not an SQLite database")


def _check_fixture(folder: Path, where: str, limits: fsdiff.WalkLimits) -> None:
    if not folder.is_dir():
        raise TaskFileError(
            f"{where}: field 'fixture': fixture folder {folder} does not exist (fixtures are folders in fixture_dir)"
        )
    try:
        fsdiff.snapshot(folder, limits)
    except fsdiff.WorkspaceTooLarge as err:
        raise TaskFileError(f"{where}: field 'fixture': {folder}: {err}") from None
