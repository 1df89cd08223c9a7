"""`selfpico`: SelfPiCo partial code execution — predict undefined values, run snippets as far as possible."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from components.checks import ConfigError, at_least
from components.selfpico.executor import summarize
from components.selfpico.snippets import user_snippets
from mlsys.flow import FlowConfig, system_flow
from mlsys.runners import fan_out
from mlsys.tracking import Tracker
from tasks.llm import LLMConfig
from tasks.selfpico import execute_batch, load_snippets

DEFAULT_MODULES = ["textwrap", "difflib", "shlex", "fractions", "statistics", "html", "calendar", "colorsys"]


@dataclass
class PredictorConfig:
    _target_: str = "components.selfpico.predictors.RuleBasedPredictor"
    max_tokens: Optional[int] = None  # LLM-guided only: a value is one short expression
    few_shot: Optional[bool] = None  # LLM-guided only; None: few-shot for the packaged model, zero-shot for a tuned one


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
    max_runs: int = 30  # sandboxed executions per snippet: one new value per run
    max_retries: int = 3  # SelfPiCo's feedback retries per value
    batch_size: int = 8  # snippets per Prefect task (a task is a coarse unit: a batch, not a run)
    wall_seconds: float = 10.0  # sandbox limits per execution
    cpu_seconds: int = 5
    memory_mb: int = 1024

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("max_runs", self.max_runs, 1)
        at_least("max_retries", self.max_retries, 0)
        at_least("batch_size", self.batch_size, 1)
        at_least("wall_seconds", self.wall_seconds, 0.5)
        if self.snippets is not None:
            try:  # every file is read and parsed now, so a bad one fails before anything runs
                user_snippets(self.snippets)
            except ValueError as err:
                raise ConfigError("snippets", self.snippets, str(err).removeprefix("selfpico: ")) from err


def _coverage_figure(reports: list[dict], predictor: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist([r["coverage"] for r in reports], bins=10, range=(0, 1), color="tab:blue")
    ax.set_xlabel("line coverage per snippet")
    ax.set_ylabel("snippets")
    ax.set_title(f"SelfPiCo, predictor {predictor}")
    return fig


@system_flow(
    name="selfpico",
    config=SelfPicoConfig,
    summary_metric="line_coverage",
    order=90,
)
def selfpico(cfg: SelfPicoConfig, tracker: Tracker) -> dict[str, float]:
    """SelfPiCo: run partial code by predicting undefined values (sandboxed), measure line coverage."""
    snippets = load_snippets(
        cfg.written,
        cfg.written_limit,
        cfg.package_modules,
        cfg.package_count,
        cfg.seed,
        user=cfg.snippets,
        heldout=cfg.heldout,
    )
    batches = [snippets[i : i + cfg.batch_size] for i in range(0, len(snippets), cfg.batch_size)]
    limits = {"wall_seconds": cfg.wall_seconds, "cpu_seconds": cfg.cpu_seconds, "memory_bytes": cfg.memory_mb << 20}
    results = fan_out(
        execute_batch,
        [
            {
                "snippets": batch,
                "predictor_cfg": cfg.predictor,
                "llm_cfg": cfg.llm,
                "limits": limits,
                "max_runs": cfg.max_runs,
                "max_retries": cfg.max_retries,
            }
            for batch in batches
        ],
    )
    reports = [report for batch in results for report in batch]
    predictor = cfg.predictor._target_.rsplit(".", 1)[-1]
    for step, report in enumerate(reports):
        tracker.log_metrics({"snippet_coverage": report["coverage"]}, step=step)
    usage = {}
    for batch in results:
        for key, value in (batch[0]["batch_llm_usage"] if batch else {}).items():
            usage[f"llm.{key}"] = usage.get(f"llm.{key}", 0) + value
    table = "| snippet | origin | coverage | runs | predictions | status | errors |\n|---|---|---|---|---|---|---|\n"
    table += "\n".join(
        f"| {r['snippet_id']} | {r['origin']} | {r['coverage']:.2f} | {r['runs']} | {r['predictions']} | "
        f"{r['final_status']} | {', '.join(e['error_type'] for e in r['errors']) or '-'} |"
        for r in reports
    )
    tracker.log_text(table, "selfpico/snippets.md")
    tracker.log_dict([{k: v for k, v in r.items() if k != "batch_llm_usage"} for r in reports], "selfpico/reports.json")
    tracker.log_figure(_coverage_figure(reports, predictor), "selfpico/coverage_hist.png")
    summary = summarize(reports) | usage
    print(f"selfpico[{predictor}]: line coverage {summary['line_coverage']:.1%} over {len(reports)} snippets")
    return summary
