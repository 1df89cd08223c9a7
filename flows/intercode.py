"""The `intercode` flow: play InterCode's SQL and Bash environments with one agent policy.

Episodes fan out as Prefect tasks (one per task record); the summary (success rate, mean reward,
turns, invalid-action fraction, overall and per hardness), every trajectory and a table go to MLflow.
Compare policies with a sweep: `mlsys run intercode -m ic_policy=gold,single_turn,try_again,react,plan_solve`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from components.checks import ConfigError, one_of
from components.intercode.rewards import SQL_ORDERS
from mlsys.flow import FlowConfig, system_flow
from mlsys.runners import fan_out
from mlsys.tracking import Tracker
from tasks.llm import LLMConfig


@dataclass
class PolicyConfig:
    """conf/ic_policy/<name>.yaml: which agent policy and its budget."""

    name: str = "try_again"  # gold | single_turn | try_again | react | plan_solve
    max_turns: int = 10  # try_again/react: turns; plan_solve: plan steps executed (the paper: 10 turns)
    max_tokens: int = 256  # per model response: one query or command


@dataclass
class SandboxConfig:
    """Limits of one agent action (see docs/sandbox.md)."""

    wall_seconds: float = 15.0  # an action's wall clock, with headroom for a busy shared machine
    cpu_seconds: int = 5  # a query or a command needs far less
    memory_mb: int = 1024  # RLIMIT_AS per process
    max_processes: int = 64  # RLIMIT_NPROC for the sandbox's uid: fork bombs stall here
    output_kb: int = 256  # output cap per action
    allow_unisolated: bool = False  # refuse to run agent actions without namespaces


@dataclass
class InterCodeConfig(FlowConfig):
    ic_policy: PolicyConfig = field(default_factory=PolicyConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    envs: list[str] = field(default_factory=lambda: ["sql", "bash"])  # which environments to play
    tasks_per_env: Optional[int] = 8  # None: all 64 SQL / 46 Bash tasks; else spread over hardness levels
    task_ids: list[str] = field(default_factory=list)  # explicit task ids instead of tasks_per_env
    asset_dir: str = "intercode"  # databases + fixtures under work_dir, built once (deterministic)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    sql_server_url: Optional[str] = None  # SQLAlchemy URL of a dedicated database: SQL on a server, not SQLite
    # Bring your own tasks: a JSON-lines file (id, query, gold, db or fixture[, hardness]); every task in it
    # runs (task_ids picks some); databases are <db>.sqlite in db_dir, fixtures folders in fixture_dir
    # (both default to the task file's folder). See docs/flows/intercode.md.
    task_file: Optional[str] = None
    db_dir: Optional[str] = None
    fixture_dir: Optional[str] = None
    sql_reward_order: str = "upstream"  # upstream InterCode's reward | position (see components/intercode/rewards.py)

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of("sql_reward_order", self.sql_reward_order, SQL_ORDERS)
        if self.task_file is None:
            for key in ("db_dir", "fixture_dir"):
                if getattr(self, key) is not None:
                    raise ConfigError(key, getattr(self, key), "only used with task_file")
            return
        if self.sql_server_url:
            raise ConfigError(
                "sql_server_url", self.sql_server_url, "works with the built-in databases only, not with task_file"
            )
        from components.intercode.user_tasks import load_task_file

        load_task_file(self.task_file, self.db_dir, self.fixture_dir)  # file, databases, fixtures: checked now


@system_flow(
    name="intercode",
    config=InterCodeConfig,
    summary_metric="success_rate",
    order=80,
)
def intercode(cfg: InterCodeConfig, tracker: Tracker) -> dict[str, float]:
    """InterCode: agents act in sandboxed SQL and Bash environments and are scored by execution."""
    from components.intercode.metrics import summarize
    from components.intercode.tasksets import TASK_SETS, select_tasks
    from tasks.intercode import prepare_assets, run_episode

    unknown = [e for e in cfg.envs if e not in TASK_SETS]
    if unknown or not cfg.envs:
        raise ValueError(f"envs must name some of {sorted(TASK_SETS)}, got {cfg.envs}")
    asset_dir = prepare_assets.submit(str(cfg.work_path(cfg.asset_dir)), cfg.seed).result()
    common = {
        "policy_cfg": cfg.ic_policy,
        "llm_cfg": cfg.llm,
        "asset_dir": asset_dir,
        "sandbox_cfg": cfg.sandbox,
        "sql_server_url": cfg.sql_server_url,
        "sql_order": cfg.sql_reward_order,
    }
    calls = []
    if cfg.task_file is not None:
        calls = _user_task_calls(cfg, common)
    for kind in cfg.envs if cfg.task_file is None else []:
        ids = [t for t in cfg.task_ids if t.startswith(kind + "-")] if cfg.task_ids else None
        if cfg.task_ids and not ids:
            continue
        for index in select_tasks(TASK_SETS[kind], cfg.tasks_per_env, ids, cfg.seed):
            calls.append({"kind": kind, "index": index, **common})
    if not calls:
        raise ValueError(f"no task selected: task_ids={cfg.task_ids} match none of envs={cfg.envs}")
    episodes = fan_out(run_episode, calls)

    metrics: dict[str, float] = {}
    summary = {"policy": cfg.ic_policy.name, "overall": summarize(episodes)}
    for kind in cfg.envs:
        mine = [e for e in episodes if e["env"] == kind]
        if not mine:
            continue
        summary[kind] = summarize(mine)
        for step, episode in enumerate(mine):
            tracker.log_metrics(
                {f"{kind}.episode_reward": episode["reward"], f"{kind}.episode_turns": episode["n_turns"]}, step=step
            )
        tracker.log_text("\n".join(_json_line(e) for e in mine), f"trajectories/{kind}.jsonl")
    for scope, block in summary.items():
        if isinstance(block, dict):
            metrics.update(_flat_metrics(scope, block))
    tracker.log_dict(summary, "tables/summary.json")
    tracker.log_text(_markdown_table(summary), "tables/summary.md")
    overall = summary["overall"]
    metrics.update(
        {
            "success_rate": overall["success_rate"],
            "mean_reward": overall["mean_reward"],
            "episodes": float(overall["episodes"]),
            "errors": float(overall["errors"]),
        }
    )
    return metrics


def _user_task_calls(cfg: InterCodeConfig, common: dict) -> list[dict]:
    """One episode per task of the user's file (those named in task_ids, if any), in its environments."""
    from pathlib import Path

    from components.intercode.user_tasks import load_task_file

    user_tasks = load_task_file(cfg.task_file, cfg.db_dir, cfg.fixture_dir)
    every_id = {t.id for kind in user_tasks for t in user_tasks[kind]}
    missing = [t for t in cfg.task_ids if t not in every_id]
    if missing:
        raise ValueError(f"task_ids {missing} are not in task_file {cfg.task_file}")
    folder = Path(cfg.task_file).expanduser().resolve().parent
    dirs = {
        "db_dir": str(Path(cfg.db_dir).expanduser().resolve()) if cfg.db_dir else str(folder),
        "fixture_dir": str(Path(cfg.fixture_dir).expanduser().resolve()) if cfg.fixture_dir else str(folder),
    }
    calls = []
    for kind in cfg.envs:
        for task in user_tasks[kind]:
            if not cfg.task_ids or task.id in cfg.task_ids:
                calls.append({"kind": kind, "index": 0, "task": task.as_dict(), **dirs, **common})
    return calls


def _json_line(episode: dict) -> str:
    import json

    return json.dumps(episode, default=str)


def _flat_metrics(scope: str, block: dict) -> dict[str, float]:
    keys = ("success_rate", "mean_reward", "mean_turns", "invalid_action_fraction")
    out = {f"{scope}.{k}": float(block[k]) for k in keys if k in block}
    for level, sub in block.get("by_hardness", {}).items():
        out.update({f"{scope}.{level}.{k}": float(sub[k]) for k in keys})
    return out


def _markdown_table(summary: dict) -> str:
    lines = [
        f"policy: {summary['policy']}",
        "",
        "| env | hardness | episodes | success rate | mean reward | mean turns | invalid actions |",
        "|---|---|---|---|---|---|---|",
    ]
    for scope, block in summary.items():
        if not isinstance(block, dict) or scope == "overall":
            continue
        rows = [("all", block), *block.get("by_hardness", {}).items()]
        for level, b in rows:
            lines.append(
                f"| {scope} | {level} | {b['episodes']} | {b['success_rate']:.3f} | {b['mean_reward']:.3f} "
                f"| {b['mean_turns']:.2f} | {b['invalid_action_fraction']:.3f} |"
            )
    return "\n".join(lines) + "\n"
