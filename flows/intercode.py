"""The `intercode` flow: play InterCode's SQL and Bash environments with one agent policy.

Episodes fan out as Prefect tasks (one per task record); the summary (success rate, mean reward,
turns, invalid-action fraction, overall and per hardness), every trajectory and a table go to MLflow.
Compare policies with a sweep: `mlsys run intercode -m ic_policy=gold,single_turn,try_again,react,plan_solve`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from flows.platform import FlowConfig, system_flow
from tasks.llm import LLMConfig
from tasks.runners import fan_out
from tasks.tracking import Tracker


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


@system_flow(name="intercode", config=InterCodeConfig,
             demo=["ic_policy=gold", "tasks_per_env=4"],
             summary_metric="success_rate", order=80)
def intercode(cfg: InterCodeConfig, tracker: Tracker) -> dict[str, float]:
    """InterCode: agents act in sandboxed SQL and Bash environments and are scored by execution."""
    from components.intercode.metrics import summarize
    from components.intercode.tasksets import TASK_SETS, select_tasks
    from tasks.intercode import prepare_assets, run_episode

    unknown = [e for e in cfg.envs if e not in TASK_SETS]
    if unknown or not cfg.envs:
        raise ValueError(f"envs must name some of {sorted(TASK_SETS)}, got {cfg.envs}")
    asset_dir = prepare_assets.submit(str(cfg.work_path(cfg.asset_dir)), cfg.seed).result()
    calls = []
    for kind in cfg.envs:
        ids = [t for t in cfg.task_ids if t.startswith(kind + "-")] if cfg.task_ids else None
        if cfg.task_ids and not ids:
            continue
        for index in select_tasks(TASK_SETS[kind], cfg.tasks_per_env, ids, cfg.seed):
            calls.append({"kind": kind, "index": index, "policy_cfg": cfg.ic_policy, "llm_cfg": cfg.llm,
                          "asset_dir": asset_dir, "sandbox_cfg": cfg.sandbox, "sql_server_url": cfg.sql_server_url})
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
            tracker.log_metrics({f"{kind}.episode_reward": episode["reward"], f"{kind}.episode_turns": episode["n_turns"]},
                                step=step)
        tracker.log_text("\n".join(_json_line(e) for e in mine), f"trajectories/{kind}.jsonl")
    for scope, block in summary.items():
        if isinstance(block, dict):
            metrics.update(_flat_metrics(scope, block))
    tracker.log_dict(summary, "tables/summary.json")
    tracker.log_text(_markdown_table(summary), "tables/summary.md")
    overall = summary["overall"]
    metrics.update({"success_rate": overall["success_rate"], "mean_reward": overall["mean_reward"],
                    "episodes": float(overall["episodes"]), "errors": float(overall["errors"])})
    return metrics


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
    lines = [f"policy: {summary['policy']}", "",
             "| env | hardness | episodes | success rate | mean reward | mean turns | invalid actions |",
             "|---|---|---|---|---|---|---|"]
    for scope, block in summary.items():
        if not isinstance(block, dict) or scope == "overall":
            continue
        rows = [("all", block), *block.get("by_hardness", {}).items()]
        for level, b in rows:
            lines.append(f"| {scope} | {level} | {b['episodes']} | {b['success_rate']:.3f} | {b['mean_reward']:.3f} "
                         f"| {b['mean_turns']:.2f} | {b['invalid_action_fraction']:.3f} |")
    return "\n".join(lines) + "\n"
