"""InterCode-SQL against a real database server (MySQL, PostgreSQL, ...) when one is configured.

Upstream runs MySQL in Docker. Here, given an SQLAlchemy URL to a *dedicated* database, the four
databases' tables are (re)created there and every episode starts from freshly loaded rows. The agent's
SQL runs on the server (the server is the isolation boundary: nothing executes in this process but
the driver), with a per-statement timeout. Only the tables of this project and the tables an agent
created during the episode are ever dropped, so a wrong URL cannot wipe unrelated tables.
Rewards, tasks and gold handling are SqlEnv's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Optional

from sqlalchemy import create_engine, inspect, text

from components.intercode.databases import DATABASES, generate
from components.intercode.env import SqlEnv
from components.intercode.tasksets import Task
from components.sandbox import Workspace

_TYPES = {"TEXT": "VARCHAR(255)", "REAL": "DOUBLE PRECISION"}  # portable across MySQL/PostgreSQL/SQLite
_TIMEOUT_SQL = {"mysql": "SET SESSION MAX_EXECUTION_TIME={ms}", "postgresql": "SET statement_timeout = {ms}"}


def portable_schema(statement: str) -> str:
    return re.sub(r"\b(TEXT|REAL)\b", lambda m: _TYPES[m.group(1)], statement)


class ServerSqlEnv(SqlEnv):
    """SqlEnv whose actions run on the database server at `url` (an SQLAlchemy URL)."""

    def __init__(
        self,
        tasks: Sequence[Task],
        url: str,
        seed: int = 0,
        statement_timeout_s: float = 5.0,
        max_rows: int = 1000,
        max_steps: Optional[int] = None,
        sql_order: str = "upstream",
    ):
        super(SqlEnv, self).__init__(tasks, sandbox=_NoSandbox(), max_steps=max_steps)  # no local files
        self.max_rows = max_rows
        self.sql_order = sql_order
        self.engine = create_engine(url)
        self.statement_timeout_ms = int(statement_timeout_s * 1000)
        self.databases = {name: generate(name, seed) for name in DATABASES}
        self._own_tables = {t for db in self.databases.values() for t in db.rows}
        self._gold_cache: dict = {}
        self.last_rows = None
        self._tables_at_reset: set[str] = set()

    def _tables(self) -> set[str]:
        return set(inspect(self.engine).get_table_names())

    def _reset_state(self) -> None:
        with self.engine.begin() as con:
            for table in (self._tables() - self._tables_at_reset) | (self._tables() & self._own_tables):
                con.execute(text(f"DROP TABLE {table}"))  # ours, or created by the last episode's agent
            for db in self.databases.values():
                for statement in db.schema:
                    con.execute(text(portable_schema(statement)))
                for table, rows in db.rows.items():
                    if rows:
                        names = [f"v{i}" for i in range(len(rows[0]))]
                        insert = text(f"INSERT INTO {table} VALUES ({', '.join(':' + n for n in names)})")
                        con.execute(insert, [dict(zip(names, row)) for row in rows])
        self._tables_at_reset = self._tables()
        self.last_rows = None
        self.gold_rows()  # computed on the freshly loaded state, before the agent can change it

    def run_query(self, query: str, workspace: Optional[Workspace]) -> dict:
        try:
            with self.engine.begin() as con:
                timeout = _TIMEOUT_SQL.get(self.engine.dialect.name)
                if timeout:
                    con.execute(text(timeout.format(ms=self.statement_timeout_ms)))
                result = con.exec_driver_sql(query.strip().rstrip(";"))
                if not result.returns_rows:
                    return {"ok": True, "rows": None}
                rows = result.fetchmany(self.max_rows + 1)
                return {
                    "ok": True,
                    "rows": [list(r) for r in rows[: self.max_rows]],
                    "truncated": len(rows) > self.max_rows,
                }
        except Exception as err:  # the server's error is the observation, as upstream
            return {"ok": False, "error": f"{type(err).__name__}: {str(err).splitlines()[0]}"}

    def gold_rows(self) -> list[tuple]:
        if self.task.id not in self._gold_cache:
            out = self.run_query(self.task.gold, None)  # gold queries only read: same loaded state
            if not out["ok"]:
                raise RuntimeError(f"gold of {self.task.id} failed: {out['error']}")
            self._gold_cache[self.task.id] = [tuple(r) for r in (out["rows"] or [])]
        return self._gold_cache[self.task.id]

    def _execute(self, action: str) -> tuple[str, bool, dict]:
        out = self.run_query(action, None)
        if not out["ok"]:
            self.last_rows = None
            return f"Error executing query: {out['error']}", False, {}
        self.last_rows = [tuple(r) for r in out["rows"]] if out["rows"] is not None else None
        return ("" if self.last_rows is None else str(self.last_rows)), True, {}

    def _close_state(self) -> None:
        self.engine.dispose()


class _NoSandbox:
    """The server executes the SQL; no local process is started for it."""
