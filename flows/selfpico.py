"""`selfpico`: SelfPiCo partial code execution — predict undefined values, run snippets as far as possible.

snippets (the user's, the held-out set, or the written ones + installed packages' function bodies)
-> batches executed in the sandbox with one predictor (one Prefect task per batch) -> line coverage,
errors found, a table and a histogram in MLflow. Compare predictors with a sweep:
`mlsys run selfpico -m sp_predictor@predictor=as_is,naive,rule_based,llm`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from prefect import unmapped

from components.checks import ConfigError, at_least
from components.llm.config import LLMConfig
from components.sandbox import SandboxLimits
from components.selfpico.config import PredictorConfig
from components.selfpico.executor import EXPLORE, MAX_RETRIES, MAX_RUNS
from components.selfpico.snippets import user_snippets
from mlsys.flow import FlowConfig, system_flow
from mlsys.tracking import Tracker
from tasks.selfpico import execute_batch, load_snippets, report_coverage

DEFAULT_MODULES = ["textwrap", "difflib", "shlex", "fractions", "statistics", "html", "calendar", "colorsys"]


def execution_limits() -> SandboxLimits:
    """One sandboxed execution of a snippet."""
    return SandboxLimits(wall_seconds=10.0, cpu_seconds=5)


@dataclass
class SelfPicoConfig(FlowConfig):
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)  # used by sp_predictor=llm only
    snippets: Optional[str] = None  # your own: a folder of .py files, a file or a glob (replaces the built-in sets)
    heldout: bool = False  # the benchmark's held-out set instead of the built-in sets
    written: bool = True  # the Stack-Overflow-style snippets written for this project
    written_limit: Optional[int] = None  # first N of them (None: all 24)
    package_modules: list[str] = field(default_factory=lambda: list(DEFAULT_MODULES))  # pure-Python, installed
    package_count: int = 16  # function bodies sampled (seeded) from those modules' source
    max_runs: int = MAX_RUNS  # sandboxed executions per snippet: one new value per run
    max_retries: int = MAX_RETRIES  # SelfPiCo's feedback retries per value
    explore: int = EXPLORE  # LLM-guided: values asked after the loop for the keys deciding lines that never ran
    batch_size: int = 8  # snippets per Prefect task (a task is a coarse unit: a batch, not a run)
    sandbox: SandboxLimits = field(default_factory=execution_limits)  # limits of one execution (docs/sandbox.md)

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("max_runs", self.max_runs, 1)
        at_least("max_retries", self.max_retries, 0)
        at_least("explore", self.explore, 0)
        at_least("batch_size", self.batch_size, 1)
        at_least("sandbox.wall_seconds", self.sandbox.wall_seconds, 0.5)
        if self.snippets is not None:
            try:  # every file is read and parsed now, so a bad one fails before anything runs
                user_snippets(self.snippets)
            except ValueError as err:
                raise ConfigError("snippets", self.snippets, str(err).removeprefix("selfpico: ")) from err


# The paper's claim this flow's summary metric measures (the suite's table, the run's summary).
CLAIM = "SelfPiCo: 72.7% of lines executed on open-source functions"


@system_flow("selfpico", SelfPicoConfig, summary_metric="line_coverage", order=90, claim=CLAIM)
def selfpico(cfg: SelfPicoConfig, tracker: Tracker) -> dict[str, float]:
    """SelfPiCo: run partial code by predicting undefined values (sandboxed), measure line coverage."""
    snippets = load_snippets(
        cfg.written, cfg.written_limit, cfg.package_modules, cfg.package_count, cfg.seed, cfg.snippets, cfg.heldout
    )
    batches = [snippets[i : i + cfg.batch_size] for i in range(0, len(snippets), cfg.batch_size)]
    settings = (cfg.predictor, cfg.llm, cfg.sandbox, cfg.max_runs, cfg.max_retries, cfg.explore)
    executed = execute_batch.map(batches, *(unmapped(value) for value in settings))
    return report_coverage(executed.result(), cfg.predictor, tracker)
