"""Persistent tournament state in one SQLite file (the paper's "context memory").

Everything the supervisor knows lives here, and each finished agent call is committed in ONE
transaction together with its effects (a new hypothesis, a review, a match and its Elo update, a
meta-review). Work is recorded as `pending` before it is handed to a worker, under a task id that
comes from a persisted counter. So after a crash or a kill:
  - a committed result is never lost (WAL journal, one transaction per result);
  - an uncommitted one is re-run from its stored payload under the same task id, and the unique
    task id on hypotheses, reviews and matches means it can never be applied twice.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from components.coscientist.agents import AgentResult, Work
from components.coscientist.elo import EloConfig, k_for, update_elo

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
  task_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, kind TEXT NOT NULL, payload TEXT NOT NULL,
  estimated_calls INTEGER NOT NULL, status TEXT NOT NULL,      -- pending | done | failed
  calls INTEGER DEFAULT 0, prompt_tokens INTEGER DEFAULT 0, completion_tokens INTEGER DEFAULT 0,
  malformed INTEGER DEFAULT 0, error TEXT, finished_seq INTEGER);
CREATE TABLE IF NOT EXISTS hypotheses (
  id TEXT PRIMARY KEY, task_id TEXT UNIQUE NOT NULL, seq INTEGER NOT NULL, text TEXT NOT NULL,
  source TEXT NOT NULL, parents TEXT NOT NULL, strategy TEXT,
  status TEXT NOT NULL,                                       -- new | active | rejected | duplicate
  duplicate_of TEXT, elo REAL NOT NULL, matches INTEGER NOT NULL DEFAULT 0, wins INTEGER NOT NULL DEFAULT 0,
  embedding BLOB);
CREATE TABLE IF NOT EXISTS reviews (
  task_id TEXT PRIMARY KEY, hypothesis_id TEXT NOT NULL, scores TEXT NOT NULL, verdict TEXT NOT NULL,
  critique TEXT NOT NULL, malformed INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS matches (
  task_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, a TEXT NOT NULL, b TEXT NOT NULL, debate INTEGER NOT NULL,
  winner TEXT, reason TEXT, elo_a_before REAL, elo_b_before REAL, elo_a_after REAL, elo_b_after REAL);
CREATE TABLE IF NOT EXISTS meta_reviews (task_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, feedback TEXT NOT NULL);
"""


def state_path(folder: Path, goal: str, seed: int, state_file: str | None = None) -> Path:
    """Where a goal's state lives: `state_file` (relative: under `folder`), else
    <folder>/<goal hash>-seed<seed>.sqlite, so the same goal and seed resume the same tournament."""
    if state_file:
        path = Path(state_file)
        return path if path.is_absolute() else folder / path
    digest = hashlib.sha256(goal.strip().encode()).hexdigest()[:12]
    return folder / f"{digest}-seed{seed}.sqlite"


def set_aside(path: Path) -> Path | None:
    """Start over without losing anything: the old state (and its WAL files) get a timestamped name."""
    if not path.exists():
        return None
    moved = path.with_name(f"{path.stem}.{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}")
    path.rename(moved)
    for suffix in ("-wal", "-shm"):
        side = Path(str(path) + suffix)
        if side.exists():
            side.rename(Path(str(moved) + suffix))
    return moved


class TournamentState:
    """One research goal's hypotheses, reviews, matches and task log in a SQLite file."""

    def __init__(self, path: str | Path, goal: str, elo: EloConfig | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.elo = elo or EloConfig()
        self.initial_elo = self.elo.initial
        self._lock = threading.RLock()
        self.db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a committed result survives a power cut too
        self.db.executescript(SCHEMA)
        stored = self.get_meta("goal")
        if stored is None:
            self.set_meta("goal", goal)
        elif stored != goal:
            raise ValueError(
                f"state file {self.path} belongs to another goal ({stored[:80]!r}); "
                "use another state file or resume=false"
            )

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ small helpers
    def _tx(self):
        return _Transaction(self)

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row["value"] if row else default

    def set_meta(self, key: str, value: Any) -> None:
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))

    def _next_seq(self) -> int:
        seq = int(self.get_meta("seq", "0")) + 1
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('seq', ?)", (str(seq),))
        return seq

    # ------------------------------------------------------------------ tasks
    def issue(self, kind: str, payload: dict, estimated_calls: int) -> Work:
        """Record new work as pending (committed before any worker sees it) and return it."""
        with self._tx():
            seq = self._next_seq()
            task_id = f"{kind}-{seq:05d}"
            self.db.execute(
                "INSERT INTO tasks (task_id, seq, kind, payload, estimated_calls, status) "
                "VALUES (?, ?, ?, ?, ?, 'pending')",
                (task_id, seq, kind, json.dumps(payload), estimated_calls),
            )
        return Work(kind, task_id, payload, estimated_calls)

    def pending_work(self) -> list[Work]:
        rows = self.db.execute("SELECT * FROM tasks WHERE status='pending' ORDER BY seq").fetchall()
        return [Work(r["kind"], r["task_id"], json.loads(r["payload"]), r["estimated_calls"]) for r in rows]

    def spent(self) -> dict[str, int]:
        """LLM calls and tokens of finished work (failed work counts its estimate: it may have called)."""
        row = self.db.execute(
            "SELECT COALESCE(SUM(CASE WHEN status='failed' THEN estimated_calls ELSE calls END),0) AS calls,"
            " COALESCE(SUM(prompt_tokens),0) AS pt, COALESCE(SUM(completion_tokens),0) AS ct,"
            " COALESCE(SUM(malformed),0) AS malformed, COUNT(*) AS tasks FROM tasks WHERE status!='pending'"
        ).fetchone()
        return {
            "calls": row["calls"],
            "prompt_tokens": row["pt"],
            "completion_tokens": row["ct"],
            "tokens": row["pt"] + row["ct"],
            "malformed": row["malformed"],
            "tasks": row["tasks"],
        }

    def task_counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for r in self.db.execute("SELECT kind, status, COUNT(*) AS n FROM tasks GROUP BY kind, status"):
            out.setdefault(r["kind"], {})[r["status"]] = r["n"]
        return out

    def task_kinds_in_order(self) -> list[str]:
        return [r["kind"] for r in self.db.execute("SELECT kind FROM tasks ORDER BY seq")]

    def mark_failed(self, work: Work, error: str) -> None:
        with self._tx():
            seq = self._next_seq()
            self.db.execute(
                "UPDATE tasks SET status='failed', error=?, finished_seq=? WHERE task_id=? AND status='pending'",
                (error[:2000], seq, work.task_id),
            )

    # ------------------------------------------------------------------ results
    def commit(
        self, result: AgentResult, embedding: np.ndarray | None = None, duplicate_of: str | None = None
    ) -> dict[str, Any]:
        """Apply one agent result and close its task, atomically; a second commit is a no-op."""
        with self._tx():
            row = self.db.execute("SELECT status FROM tasks WHERE task_id=?", (result.task_id,)).fetchone()
            if row is None:
                raise KeyError(f"unknown task {result.task_id}")
            if row["status"] != "pending":
                return {"applied": False}
            seq = self._next_seq()
            effect = getattr(self, f"_apply_{result.kind}")(result, seq, embedding, duplicate_of)
            self.db.execute(
                "UPDATE tasks SET status='done', calls=?, prompt_tokens=?, completion_tokens=?, malformed=?, "
                "finished_seq=? "
                "WHERE task_id=?",
                (
                    result.calls,
                    result.prompt_tokens,
                    result.completion_tokens,
                    int(result.malformed),
                    seq,
                    result.task_id,
                ),
            )
        return {"applied": True, **(effect or {})}

    def _insert_hypothesis(self, result: AgentResult, seq: int, source: str, embedding, duplicate_of) -> dict:
        text = result.output.get("hypothesis")
        if not text:
            return {"hypothesis_id": None}
        hyp_id = "H" + result.task_id.split("-")[-1]  # stable: derived from the task that made it
        status = "duplicate" if duplicate_of else "new"
        blob = None if embedding is None else np.asarray(embedding, dtype=np.float32).tobytes()
        self.db.execute(
            "INSERT INTO hypotheses (id, task_id, seq, text, source, parents, strategy, status, duplicate_of, "
            "elo, embedding) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                hyp_id,
                result.task_id,
                seq,
                text,
                source,
                json.dumps(result.output.get("parents", [])),
                result.output.get("strategy"),
                status,
                duplicate_of,
                self.initial_elo,
                blob,
            ),
        )
        return {"hypothesis_id": hyp_id, "duplicate_of": duplicate_of}

    def _apply_generate(self, result, seq, embedding, duplicate_of):
        return self._insert_hypothesis(result, seq, "generation", embedding, duplicate_of)

    def _apply_evolve(self, result, seq, embedding, duplicate_of):
        return self._insert_hypothesis(result, seq, "evolution", embedding, duplicate_of)

    def _apply_reflect(self, result, seq, *_):
        out = result.output
        self.db.execute(
            "INSERT INTO reviews VALUES (?,?,?,?,?,?)",
            (
                result.task_id,
                out["hypothesis_id"],
                json.dumps(out["scores"]),
                out["verdict"],
                out["critique"],
                int(result.malformed),
            ),
        )
        new_status = "rejected" if out["verdict"] == "reject" else "active"
        self.db.execute(
            "UPDATE hypotheses SET status=? WHERE id=? AND status='new'", (new_status, out["hypothesis_id"])
        )
        return {"status": new_status}

    def _apply_rank(self, result, seq, *_):
        out = result.output
        a, b, winner = out["a"], out["b"], out["winner"]
        (ra, ma), (rb, mb) = (
            tuple(self.db.execute("SELECT elo, matches FROM hypotheses WHERE id=?", (h,)).fetchone()) for h in (a, b)
        )
        if winner is None:  # malformed verdict: the match is void, ratings untouched
            na, nb = ra, rb
        else:
            # Ratings are read now, not when the match was issued: concurrent matches compose.
            na, nb = update_elo(ra, rb, 1.0 if winner == a else 0.0, k_for(ma, self.elo), k_for(mb, self.elo))
            for h, new in ((a, na), (b, nb)):
                self.db.execute(
                    "UPDATE hypotheses SET elo=?, matches=matches+1, wins=wins+? WHERE id=?", (new, int(winner == h), h)
                )
        self.db.execute(
            "INSERT INTO matches VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (result.task_id, seq, a, b, int(out["debate"]), winner, out.get("reason", ""), ra, rb, na, nb),
        )
        return {"winner": winner}

    def _apply_meta_review(self, result, seq, *_):
        if result.output.get("feedback"):
            self.db.execute("INSERT INTO meta_reviews VALUES (?,?,?)", (result.task_id, seq, result.output["feedback"]))
        return {}

    # ------------------------------------------------------------------ queries
    def hypotheses(self, statuses: Iterable[str] | None = None) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM hypotheses ORDER BY seq").fetchall()
        wanted = set(statuses) if statuses is not None else None
        out = []
        for r in rows:
            if wanted is None or r["status"] in wanted:
                d = dict(r)
                d["parents"] = json.loads(d["parents"])
                d["embedding"] = None if d["embedding"] is None else np.frombuffer(d["embedding"], dtype=np.float32)
                out.append(d)
        return out

    def reviews(self) -> dict[str, dict[str, Any]]:
        """The latest review of each hypothesis."""
        out = {}
        for r in self.db.execute(
            "SELECT r.* FROM reviews r JOIN tasks t ON t.task_id=r.task_id ORDER BY t.finished_seq"
        ):
            out[r["hypothesis_id"]] = {
                "scores": json.loads(r["scores"]),
                "verdict": r["verdict"],
                "critique": r["critique"],
                "malformed": bool(r["malformed"]),
            }
        return out

    def matches(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute("SELECT * FROM matches ORDER BY seq")]

    def meta_reviews(self) -> list[str]:
        return [r["feedback"] for r in self.db.execute("SELECT feedback FROM meta_reviews ORDER BY seq")]

    def latest_feedback(self) -> str | None:
        reviews = self.meta_reviews()
        return reviews[-1] if reviews else None


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT under the state's lock; ROLLBACK on any error."""

    def __init__(self, state: TournamentState):
        self.state = state

    def __enter__(self):
        self.state._lock.acquire()
        self.state.db.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self.state.db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.state._lock.release()
        return False
