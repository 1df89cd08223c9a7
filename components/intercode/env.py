"""InterCode's interactive environments as gymnasium environments: SQL (SQLite) and Bash.

Semantics follow the paper: `reset(index)` starts a clean episode and observes the task's
natural-language query; `step(action)` executes the action and observes its output (reward 0, not
done); `step("submit")` ends the episode and scores it against the gold solution; `step("skip")`
ends it with reward 0. Following gymnasium, `step` returns (observation, reward, terminated,
truncated, info); `info["action_executed"]` says whether the action ran without error.
`evaluate()` scores the current state without ending the episode (the "try again" policies
receive that reward as feedback, as upstream does by calling submit after every action).

Every action runs inside the sandbox (components/sandbox): SQL in a sandboxed Python that opens a
copy of the database, Bash in a sandboxed shell whose writable file system is a copy of the task's
fixture mounted at /testbed. Each episode gets fresh copies; gold solutions run in a separate copy.
"""

from __future__ import annotations

import json
import os
import shlex
import string
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import gymnasium as gym
from gymnasium import spaces

from components.intercode import fsdiff
from components.intercode.rewards import SQL_ORDERS, bash_reward, sql_reward
from components.intercode.tasksets import Task
from components.sandbox import Sandbox, SandboxLimits, Workspace

SUBMIT, SKIP = "submit", "skip"
MAX_TEXT = 1 << 16


class InterCodeEnv(gym.Env):
    """Shared episode logic; subclasses execute actions and compute the reward."""

    metadata = {"render_modes": []}
    language = ""

    def __init__(self, tasks: Sequence[Task], sandbox: Optional[Sandbox] = None, max_steps: Optional[int] = None):
        if not tasks:
            raise ValueError("an InterCode environment needs at least one task")
        self.tasks = list(tasks)
        self.sandbox = sandbox or Sandbox(SandboxLimits(wall_seconds=15, cpu_seconds=5, memory_bytes=1 << 30))
        self.max_steps = max_steps  # None: the policy decides when to stop
        text = spaces.Text(max_length=MAX_TEXT, charset=string.printable)
        self.observation_space, self.action_space = text, text
        self.task: Optional[Task] = None
        self.observation = ""
        self.steps = 0
        self.done = True

    # ---------------------------------------------------------------- gymnasium API
    def reset(
        self, index: Optional[int] = None, *, seed: Optional[int] = None, options: Optional[dict] = None
    ) -> tuple[str, dict]:
        super().reset(seed=seed)
        if index is None:
            index = (options or {}).get("index", int(self.np_random.integers(len(self.tasks))))
        if not 0 <= index < len(self.tasks):
            raise IndexError(f"task index {index} out of range: this environment has {len(self.tasks)} tasks")
        self.task = self.tasks[index]
        self.observation, self.steps, self.done = "", 0, False
        self._reset_state()
        return self.task.query, {"task_id": self.task.id, "hardness": self.task.hardness, "index": index}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        if self.task is None or self.done:
            raise RuntimeError("call reset() before step(); the previous episode has ended")
        if not isinstance(action, str):
            raise TypeError(f"an action is a string, got {type(action).__name__}")
        stripped = action.strip()
        if stripped == SUBMIT:
            self.done = True
            reward, info = self.evaluate()
            return self.observation, reward, True, False, {**info, "action_executed": True}
        if stripped == SKIP:
            self.done = True
            return self.observation, 0.0, True, False, {"action_executed": True, "skipped": True}
        self.steps += 1
        self.observation, executed, extra = self._execute(stripped)
        truncated = self.max_steps is not None and self.steps >= self.max_steps
        return self.observation, 0.0, False, truncated, {"action_executed": executed, **extra}

    def evaluate(self) -> tuple[float, dict]:
        """The reward the current state would get on submit (the episode goes on)."""
        if self.task is None:
            raise RuntimeError("call reset() first")
        return self._reward()

    def close(self) -> None:
        self._close_state()

    # ---------------------------------------------------------------- for subclasses
    def _reset_state(self) -> None:
        raise NotImplementedError

    def _execute(self, action: str) -> tuple[str, bool, dict]:
        raise NotImplementedError

    def _reward(self) -> tuple[float, dict]:
        raise NotImplementedError

    def _close_state(self) -> None:
        pass


def renew_workspace(workspace: Workspace) -> None:
    """The workspace back to a fresh copy of its fixture; the sandbox removes the agent's tree whatever
    it is (a tmpfs is unmounted, anything else walked iteratively: any depth, unwritable folders)."""
    workspace.reset()


def close_workspaces(workspaces: Sequence[Workspace]) -> None:
    """Remove every workspace, whatever the agent left in it; one that cannot be removed does not keep
    the others on disk, and is reported as a warning rather than an exception from close()."""
    left = []
    for workspace in workspaces:
        try:
            workspace.close()
            if os.path.lexists(workspace.path):
                left.append(str(workspace.path))
        except Exception as err:  # noqa: BLE001 - close() must go on with the other workspaces
            left.append(f"{workspace.path} ({type(err).__name__}: {err})")
    if left:
        warnings.warn(f"InterCode could not remove workspaces: {', '.join(left)}", RuntimeWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------- SQL
# Runs inside the sandbox: one statement against a database copy; rows back as JSON on stdout.
# MySQL's SHOW TABLES / DESC(RIBE) t / USE db (what upstream's prompts teach models) map to SQLite.
SQL_RUNNER = r"""
import json, re, sqlite3, sys
req = json.load(sys.stdin)
query = req["query"].strip().rstrip(";").strip()
if re.fullmatch(r"(?is)show\s+tables", query):
    query = "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
m = re.fullmatch(r"(?is)(?:desc|describe)\s+[`\"]?(\w+)[`\"]?", query)
if m:
    query = "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info('%s')" % m.group(1)
if re.fullmatch(r"(?is)use\s+\w+", query):
    query = "SELECT 1 WHERE 0"
out = {"ok": True, "rows": None, "truncated": False}
try:
    con = sqlite3.connect(req["db"], isolation_level=None)
    cur = con.execute(query)
    if cur.description is not None:
        rows = cur.fetchmany(req["max_rows"] + 1)
        out["truncated"] = len(rows) > req["max_rows"]
        out["rows"] = [[v.hex() if isinstance(v, bytes) else v for v in r] for r in rows[: req["max_rows"]]]
    con.close()
except Exception as err:
    out = {"ok": False, "error": f"{type(err).__name__}: {err}"}
sys.stdout.write(json.dumps(out))
"""


class SqlEnv(InterCodeEnv):
    """SQL over SQLite databases (one file per database), copied fresh for every episode."""

    language = "sql"

    def __init__(
        self,
        tasks: Sequence[Task],
        db_dir: Path,
        sandbox: Optional[Sandbox] = None,
        max_rows: int = 1000,
        max_steps: Optional[int] = None,
        sql_order: str = "upstream",
    ):
        super().__init__(tasks, sandbox, max_steps)
        if sql_order not in SQL_ORDERS:
            raise ValueError(f"sql_order must be one of {SQL_ORDERS}, not {sql_order!r}")
        self.sql_order = sql_order  # how the reward judges row order (rewards.sql_reward)
        self.db_dir = Path(db_dir)
        missing = sorted({t.db for t in self.tasks if not (self.db_dir / f"{t.db}.sqlite").exists()})
        if missing:
            raise FileNotFoundError(f"databases {missing} are missing from {self.db_dir}")
        self.max_rows = max_rows  # rows kept per result: enough for every gold, bounds huge joins
        self._agent_ws: Optional[Workspace] = None
        self._gold_ws: Optional[Workspace] = None
        self._gold_cache: dict[str, tuple[list, str]] = {}
        self.last_rows: Optional[list] = None

    def _reset_state(self) -> None:
        if self._agent_ws is None:
            self._agent_ws = self.sandbox.workspace(self.db_dir, inside="/data")
        else:
            renew_workspace(self._agent_ws)
        self.last_rows = None

    def run_query(self, query: str, workspace: Workspace) -> dict:
        request = json.dumps({"db": f"/data/{self.task.db}.sqlite", "query": query, "max_rows": self.max_rows})
        result = self.sandbox.run_python(SQL_RUNNER, stdin=request, workspace=workspace, site=False)
        if result.killed_reason or result.returncode != 0:
            reason = result.killed_reason or result.stderr.strip().splitlines()[-1:] or [result.describe()]
            return {"ok": False, "error": f"query stopped: {reason if isinstance(reason, str) else reason[0]}"}
        try:
            return json.loads(result.stdout)
        except ValueError:
            return {"ok": False, "error": "query produced no readable result"}

    def _execute(self, action: str) -> tuple[str, bool, dict]:
        out = self.run_query(action, self._agent_ws)
        if not out["ok"]:
            self.last_rows = None
            return f"Error executing query: {out['error']}", False, {}
        rows = out["rows"]
        self.last_rows = [tuple(r) for r in rows] if rows is not None else None
        shown = "" if rows is None else str(self.last_rows)
        return shown + (" (truncated)" if out.get("truncated") else ""), True, {}

    def gold_rows(self) -> list[tuple]:
        if self.task.id not in self._gold_cache:
            if self._gold_ws is None:
                self._gold_ws = self.sandbox.workspace(self.db_dir, inside="/data")
            else:
                renew_workspace(self._gold_ws)
            out = self.run_query(self.task.gold, self._gold_ws)
            if not out["ok"]:
                raise RuntimeError(f"gold of {self.task.id} failed: {out['error']}")
            self._gold_cache[self.task.id] = [tuple(r) for r in (out["rows"] or [])]
        return self._gold_cache[self.task.id]

    def _reward(self) -> tuple[float, dict]:
        # The reward compares the result of the agent's last action (upstream: its last observation).
        reward, info = sql_reward(self.last_rows, self.gold_rows(), order=self.sql_order)
        return reward, info

    def _close_state(self) -> None:
        close_workspaces([ws for ws in (self._agent_ws, self._gold_ws) if ws is not None])
        self._agent_ws = self._gold_ws = None


# --------------------------------------------------------------------------------------- Bash
CWD_MARKER = "\n__INTERCODE_CWD__="


class BashEnv(InterCodeEnv):
    """Bash over a file-system fixture mounted at /testbed; each action is one `bash -c` in the
    sandbox, starting in the directory the previous actions `cd`-ed to (tracked as upstream does)."""

    language = "bash"
    MOUNT = "/testbed"

    def __init__(
        self,
        tasks: Sequence[Task],
        fixture_dir: Path,
        sandbox: Optional[Sandbox] = None,
        max_steps: Optional[int] = None,
        limits: fsdiff.WalkLimits = fsdiff.WalkLimits(),
    ):
        super().__init__(tasks, sandbox, max_steps)
        self.limits = limits  # how far the host walks the agent's file system when scoring it
        self.fixture_dir = Path(fixture_dir)
        missing = sorted({t.fixture for t in self.tasks if not (self.fixture_dir / t.fixture).is_dir()})
        if missing:
            raise FileNotFoundError(f"file-system fixtures {missing} are missing from {self.fixture_dir}")
        self._agent_ws: dict[str, Workspace] = {}
        self._gold_ws: dict[str, Workspace] = {}
        self._pristine: dict[str, dict] = {}
        self._gold_cache: dict[str, dict] = {}
        self.cwd = self.MOUNT

    def _workspace(self, pool: dict, fixture: str) -> Workspace:
        if fixture not in pool:
            pool[fixture] = self.sandbox.workspace(self.fixture_dir / fixture, inside=self.MOUNT)
        else:
            renew_workspace(pool[fixture])
        return pool[fixture]

    def _reset_state(self) -> None:
        self._workspace(self._agent_ws, self.task.fixture)
        if self.task.fixture not in self._pristine:
            try:
                self._pristine[self.task.fixture] = fsdiff.snapshot(self.fixture_dir / self.task.fixture, self.limits)
            except fsdiff.WorkspaceTooLarge as err:
                raise ValueError(f"fixture {self.fixture_dir / self.task.fixture}: {err}") from None
        self.cwd = self.MOUNT

    def run_shell(self, command: str, workspace: Workspace, cwd: str) -> tuple[str, bool, Optional[str]]:
        """(output with stderr merged, succeeded, the directory the shell ended in or None)."""
        script = (
            f"exec 2>&1\ncd -- {shlex.quote(cwd)} || exit 1\n{command}\n"
            f"__ic_rc=$?\nprintf '{CWD_MARKER.encode('unicode_escape').decode()}%s' \"$PWD\"\nexit $__ic_rc\n"
        )
        result = self.sandbox.run_command(script, workspace=workspace)
        output, new_cwd = result.stdout, None
        if CWD_MARKER in output:
            output, new_cwd = output.rsplit(CWD_MARKER, 1)
        if result.killed_reason:
            output += f"\n(command stopped: {result.killed_reason})"
        return output, result.ok, new_cwd

    def _execute(self, action: str) -> tuple[str, bool, dict]:
        output, ok, new_cwd = self.run_shell(action, self._agent_ws[self.task.fixture], self.cwd)
        if new_cwd is not None:
            self.cwd = new_cwd
        return output, ok, {"cwd": self.cwd}

    def _changes(self, root: Path) -> tuple[set, dict]:
        """The file-system changes against the fixture and their content hashes, from one bounded walk
        (raises fsdiff.WorkspaceTooLarge)."""
        state = fsdiff.snapshot(root, self.limits)
        changes = fsdiff.diff(self._pristine[self.task.fixture], state)
        return changes, fsdiff.hashes_of(state, [path for path, status in changes if status in ("A", "M")])

    def gold_outcome(self) -> dict:
        if self.task.id not in self._gold_cache:
            ws = self._workspace(self._gold_ws, self.task.fixture)
            output, _, _ = self.run_shell(self.task.gold, ws, self.MOUNT)
            try:
                changes, hashes = self._changes(ws.path)
            except fsdiff.WorkspaceTooLarge as err:
                raise RuntimeError(f"gold of {self.task.id} cannot be scored: {err}") from None
            self._gold_cache[self.task.id] = {"output": output, "changes": changes, "hashes": hashes}
        return self._gold_cache[self.task.id]

    def _reward(self) -> tuple[float, dict]:
        gold = self.gold_outcome()
        try:
            changes, hashes = self._changes(self._agent_ws[self.task.fixture].path)
        except fsdiff.WorkspaceTooLarge as err:
            # The agent's tree is past the walk's limits: reward 0, and the reason is what it observes.
            self.observation = f"{err} (reward 0: the file system cannot be compared)"
            return 0.0, {"workspace_error": str(err)}
        return bash_reward(changes, gold["changes"], hashes, gold["hashes"], self.observation, gold["output"])

    def _close_state(self) -> None:
        close_workspaces([*self._agent_ws.values(), *self._gold_ws.values()])
        self._agent_ws, self._gold_ws = {}, {}


def make_env(
    kind: str, tasks: Sequence[Task], asset_dir: Path, sandbox: Optional[Sandbox] = None, **kwargs: Any
) -> InterCodeEnv:
    """`kind` 'sql' or 'bash'; assets as written by `components.intercode.assets.prepare`.
    `server_url` (SQL only): run on that database server instead of SQLite (see sql_server.py)."""
    server_url = kwargs.pop("server_url", None)
    if kind == "sql" and server_url:
        from components.intercode.sql_server import ServerSqlEnv  # noqa: PLC0415  (import cycle: it subclasses SqlEnv)

        return ServerSqlEnv(tasks, server_url, **kwargs)
    if kind == "sql":
        return SqlEnv(tasks, Path(asset_dir) / "databases", sandbox, **kwargs)
    if kind == "bash":
        return BashEnv(tasks, Path(asset_dir) / "filesystems", sandbox, **kwargs)
    raise ValueError(f"unknown InterCode environment {kind!r}: use 'sql' or 'bash'")
