"""A run killed mid-way (SIGKILL, in a subprocess) resumes from its SQLite state: nothing committed is
lost, nothing is applied twice, and the budget still holds."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.coscientist import _resume_worker as resume_worker

ROOT = Path(__file__).resolve().parents[2]


def _snapshot(path: Path) -> dict:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {
            "done": db.execute("SELECT COUNT(*) FROM tasks WHERE status!='pending'").fetchone()[0],
            "pending": db.execute("SELECT COUNT(*) FROM tasks WHERE status='pending'").fetchone()[0],
            "hypotheses": dict(db.execute("SELECT id, text FROM hypotheses").fetchall()),
            "matches": [r[0] for r in db.execute("SELECT task_id FROM matches")],
        }
    except sqlite3.OperationalError:  # tables not created yet
        return {"done": 0, "pending": 0, "hypotheses": {}, "matches": []}
    finally:
        db.close()


def test_killed_run_resumes_without_losing_or_duplicating_hypotheses(tmp_path):
    path = tmp_path / "state.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.coscientist._resume_worker", str(path), "0.05"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and _snapshot(path)["done"] >= 25:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"worker ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _snapshot(path)
    assert before["pending"] > 0, "the kill should leave work in flight"
    assert 25 <= before["done"] < resume_worker.BUDGET_CALLS

    summary = resume_worker.run(path, latency_s=0.0)  # resume the same state in this process

    after = _snapshot(path)
    assert after["pending"] == 0
    # Nothing lost: every hypothesis and match committed before the kill is still there, unchanged.
    assert all(after["hypotheses"].get(h) == text for h, text in before["hypotheses"].items())
    assert set(before["matches"]) <= set(after["matches"])
    db = sqlite3.connect(path)
    # Nothing duplicated: one hypothesis per finished generation/evolution task, one match per ranking task.
    made = {r[0] for r in db.execute("SELECT task_id FROM tasks WHERE kind IN ('generate','evolve') AND status='done'")}
    owners = [r[0] for r in db.execute("SELECT task_id FROM hypotheses")]
    assert sorted(owners) == sorted(made)
    ranks = {r[0] for r in db.execute("SELECT task_id FROM tasks WHERE kind='rank' AND status='done'")}
    assert sorted(after["matches"]) == sorted(ranks)
    # Ratings applied once per match: a hypothesis' match count equals its decided matches.
    for hyp, n in db.execute("SELECT id, matches FROM hypotheses"):
        decided = db.execute(
            "SELECT COUNT(*) FROM matches WHERE winner IS NOT NULL AND (a=? OR b=?)", (hyp, hyp)
        ).fetchone()[0]
        assert n == decided
    db.close()
    # The budget covers both runs together.
    assert resume_worker.BUDGET_CALLS - 4 <= summary["spent"]["calls"] <= resume_worker.BUDGET_CALLS
