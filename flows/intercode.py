"""The `intercode` flow: play InterCode's SQL and Bash environments with an agent policy.

assets (databases + fixtures, built once) -> the episodes (built-in tasks or a user's task file)
-> one Prefect task per episode and policy (`ic_policy`, then every `compare_policies` entry, on the
same tasks) -> summaries (success rate, mean reward, turns, invalid actions, overall and per hardness),
trajectories and a table per policy in MLflow.
Compare policies in one run: `mlsys run intercode +ic_policy@compare_policies.gold=gold`; or as a sweep:
`mlsys run intercode -m ic_policy=gold,single_turn,try_again,react,plan_solve`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from prefect import unmapped

from components.checks import ConfigError, one_of
from components.intercode.episodes import builtin_episodes, user_episodes
from components.intercode.policies import PolicyConfig
from components.intercode.rewards import SQL_ORDERS
from components.intercode.user_tasks import load_task_file
from components.llm.config import LLMConfig
from components.sandbox import SandboxLimits
from mlsys.flow import FlowConfig, system_flow
from mlsys.tracking import Tracker
from tasks.intercode import prepare_assets, report, run_episode

RESERVED_LABELS = ("overall", "sql", "bash", "compared")  # metric scopes a compared policy's key would shadow


def action_limits() -> SandboxLimits:
    """One agent action: a query or a command; the wall clock has headroom for a busy shared machine."""
    return SandboxLimits(wall_seconds=15.0, cpu_seconds=5, output_bytes=256 << 10)


@dataclass
class InterCodeConfig(FlowConfig):
    ic_policy: PolicyConfig = field(default_factory=PolicyConfig)
    # more policies played on the same episodes, reported beside ic_policy under their key
    # (`<key>.success_rate`, ...): e.g. gold as the ceiling, single_turn as the no-feedback baseline
    compare_policies: dict[str, PolicyConfig] = field(default_factory=dict)
    llm: LLMConfig = field(default_factory=LLMConfig)
    envs: list[str] = field(default_factory=lambda: ["sql", "bash"])  # which environments to play
    tasks_per_env: Optional[int] = 8  # None: all 64 SQL / 46 Bash tasks; else spread over hardness levels
    task_ids: list[str] = field(default_factory=list)  # explicit task ids instead of tasks_per_env
    asset_dir: str = "intercode"  # databases + fixtures under work_dir, built once (deterministic)
    sandbox: SandboxLimits = field(default_factory=action_limits)  # limits of one agent action (docs/sandbox.md)
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
        for label in self.compare_policies:
            if not label.isidentifier() or label in RESERVED_LABELS:
                raise ConfigError(f"compare_policies.{label}", label, "a key is a metric prefix: a name, not a scope")
        if self.task_file is None:
            for key in ("db_dir", "fixture_dir"):
                if getattr(self, key) is not None:
                    raise ConfigError(key, getattr(self, key), "only used with task_file")
            return
        if self.sql_server_url:
            raise ConfigError(
                "sql_server_url", self.sql_server_url, "works with the built-in databases only, not with task_file"
            )
        load_task_file(self.task_file, self.db_dir, self.fixture_dir)  # file, databases, fixtures: checked now

    def policies(self) -> dict[str, PolicyConfig]:
        """Every policy this run plays: ic_policy under "" (plain metric names), then the compared ones."""
        return {"": self.ic_policy, **self.compare_policies}


# The paper's claim this flow's summary metric measures (the suite's table, the run's summary).
CLAIM = "execution feedback raises success (GPT-4 SQL 9.1% -> 73.7% with try-again)"


@system_flow("intercode", InterCodeConfig, summary_metric="success_rate", order=80, claim=CLAIM)
def intercode(cfg: InterCodeConfig, tracker: Tracker) -> dict[str, float]:
    """InterCode: agents act in sandboxed SQL and Bash environments and are scored by execution."""
    asset_dir = prepare_assets(str(cfg.work_path(cfg.asset_dir)), cfg.seed)
    if cfg.task_file is None:
        episodes = builtin_episodes(cfg.envs, cfg.tasks_per_env, cfg.task_ids, cfg.seed, asset_dir)
    else:
        episodes = user_episodes(cfg.task_file, cfg.envs, cfg.task_ids, cfg.db_dir, cfg.fixture_dir)
    setting = {"llm_cfg": cfg.llm, "sandbox": cfg.sandbox, "llm_base_dir": asset_dir}
    setting |= {"sql_server_url": cfg.sql_server_url, "sql_order": cfg.sql_reward_order}
    runs = {
        label: run_episode.map(episodes, unmapped(policy), **{k: unmapped(v) for k, v in setting.items()})
        for label, policy in cfg.policies().items()
    }
    return report({label: futures.result() for label, futures in runs.items()}, cfg.envs, tracker)
