"""Prefect tasks of the `intercode` flow: build the assets once, play one episode per task run."""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Optional

from prefect import task

from components.intercode import assets
from components.intercode.env import BashEnv, SqlEnv, make_env
from components.intercode.policies import build_policy
from components.intercode.tasksets import TASK_SETS, Task
from components.sandbox import Sandbox, SandboxLimits


def _plain(cfg: Any) -> dict:
    return asdict(cfg) if is_dataclass(cfg) else dict(cfg)


@task(name="intercode-assets")
def prepare_assets(base_dir: str, seed: int) -> str:
    """SQLite databases and file-system fixtures under `base_dir` (reused when already built)."""
    return str(assets.prepare(Path(base_dir), seed))


def sandbox_from(cfg: Any) -> Sandbox:
    values = _plain(cfg)
    return Sandbox(
        SandboxLimits(
            wall_seconds=values["wall_seconds"],
            cpu_seconds=values["cpu_seconds"],
            memory_bytes=values["memory_mb"] << 20,
            max_processes=values["max_processes"],
            output_bytes=values["output_kb"] << 10,
            allow_unisolated=values["allow_unisolated"],
        )
    )


@task(name="intercode-episode", task_run_name="{kind}-{index}-{policy_cfg.name}")
def run_episode(
    kind: str,
    index: int,
    policy_cfg: Any,
    llm_cfg: Any,
    asset_dir: str,
    sandbox_cfg: Any,
    sql_server_url: Optional[str] = None,
    sql_order: str = "upstream",
    task: Optional[dict] = None,
    db_dir: Optional[str] = None,
    fixture_dir: Optional[str] = None,
) -> dict:
    """One episode: a fresh environment (own sandbox identity), the policy, the trajectory as a dict.
    The LLM is built here from its config, so the task also runs on a Dask worker. `task` (a user's task
    record) plays that task over `db_dir` / `fixture_dir` instead of the built-in task `index`."""
    policy_values = _plain(policy_cfg)
    llm = None
    if policy_values["name"] != "gold":
        from tasks.llm import build_llm

        llm = build_llm(llm_cfg, base_dir=asset_dir)
    policy = build_policy(policy_values["name"], llm, policy_values["max_turns"], policy_values["max_tokens"])
    if task is not None:
        tasks, index = [Task(**task)], 0
        env = (
            SqlEnv(tasks, Path(db_dir), sandbox_from(sandbox_cfg), sql_order=sql_order)
            if kind == "sql"
            else BashEnv(tasks, Path(fixture_dir), sandbox_from(sandbox_cfg))
        )
    else:
        server = {"server_url": sql_server_url} if kind == "sql" and sql_server_url else {}
        order = {"sql_order": sql_order} if kind == "sql" else {}
        env = make_env(
            kind, TASK_SETS[kind], Path(asset_dir), None if server else sandbox_from(sandbox_cfg), **server, **order
        )
    try:
        return policy.run(env, index).as_dict()
    finally:
        env.close()
