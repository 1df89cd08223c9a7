"""Prefect tasks of the `intercode` flow: build the assets once, play one episode per task run, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run

from components.intercode import assets
from components.intercode.episodes import EpisodeSpec, episode_env
from components.intercode.metrics import flat_metrics, markdown_table, policy_summary
from components.intercode.policies import PolicyConfig, build_policy, policy_class
from components.llm.config import LLMConfig
from components.llm.factory import build_llm
from components.sandbox import SandboxLimits
from mlsys.tracking import Tracker


@task(name="intercode-assets")
def prepare_assets(base_dir: str, seed: int) -> str:
    """SQLite databases and file-system fixtures under `base_dir` (reused when already built)."""
    return str(assets.prepare(Path(base_dir), seed))


def _episode_run_name() -> str:
    params = task_run.parameters
    return f"{params['episode'].task.id}-{params['policy_cfg']._target_.rsplit('.', 1)[-1]}"


@task(name="intercode-episode", task_run_name=_episode_run_name)
def run_episode(
    episode: EpisodeSpec,
    policy_cfg: PolicyConfig,
    llm_cfg: LLMConfig,
    sandbox: SandboxLimits,
    llm_base_dir: str,
    sql_server_url: Optional[str] = None,
    sql_order: str = "upstream",
) -> dict:
    """One episode in a fresh environment (own sandbox workspaces); the trajectory as a dict. The LLM is
    built here from its config (relative cache under `llm_base_dir`), so the task also runs on a Dask worker."""
    llm = build_llm(llm_cfg, base_dir=llm_base_dir) if policy_class(policy_cfg).uses_llm else None
    env = episode_env(episode, sandbox, sql_server_url, sql_order)
    try:
        return build_policy(policy_cfg, llm).run(env, 0).as_dict()
    finally:
        env.close()


@task(name="intercode-report", cache_policy=NO_CACHE)
def report(played: dict[str, list[dict]], envs: list[str], tracker: Tracker) -> dict[str, float]:
    """Summaries, per-episode curves, trajectories and a table per policy to MLflow. The first policy
    (ic_policy) reports under the plain metric names, every compared one under `<its key>.`."""
    summaries = {label: policy_summary(episodes, envs) for label, episodes in played.items()}
    metrics: dict[str, float] = {}
    for label, episodes in played.items():
        prefix = f"{label}." if label else ""
        metrics.update(flat_metrics(summaries[label], prefix))
        for kind in envs:
            mine = [e for e in episodes if e["env"] == kind]
            for step, episode in enumerate(mine):
                curves = {"episode_reward": episode["reward"], "episode_turns": episode["n_turns"]}
                tracker.log_metrics({f"{prefix}{kind}.{k}": v for k, v in curves.items()}, step=step)
            if mine:
                lines = "\n".join(json.dumps(e, default=str) for e in mine)
                tracker.log_text(lines, f"trajectories/{label + '/' if label else ''}{kind}.jsonl")
    main = summaries[""]
    tracker.log_dict({**main, "compared": {k: v for k, v in summaries.items() if k}}, "tables/summary.json")
    tracker.log_text(markdown_table(summaries), "tables/summary.md")
    scores = [(s["policy"], s["overall"]["success_rate"], s["overall"]["mean_reward"]) for s in summaries.values()]
    print("intercode: " + " | ".join(f"{p}: success rate {s:.2f}, mean reward {r:.3f}" for p, s, r in scores))
    return metrics
