"""Prefect tasks of the `selfpico` flow: gather snippets, execute a batch of them in the sandbox, report."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from components.llm.config import LLMConfig
from components.llm.factory import build_llm
from components.sandbox import Sandbox, SandboxLimits
from components.selfpico.config import PredictorConfig, build_predictor, predictor_needs_llm
from components.selfpico.executor import Snippet, execute_snippet, summarize
from components.selfpico.report import coverage_figure, snippet_table
from components.selfpico.snippets import heldout_snippets, package_function_snippets, user_snippets, written_snippets
from mlsys.tracking import Tracker


@task(name="selfpico-load-snippets")
def load_snippets(
    written: bool,
    written_limit: int | None,
    package_modules: list[str],
    package_count: int,
    seed: int,
    user: str | None = None,
    heldout: bool = False,
) -> list[Snippet]:
    """The user's snippets (`user`: folder, file or glob) alone when given; else the held-out set, or the
    written snippets plus package function bodies."""
    if user:
        return user_snippets(user)
    if heldout:
        return heldout_snippets()
    chosen = written_snippets()[:written_limit] if written else []
    if package_count:
        chosen += package_function_snippets(package_modules, package_count, seed=seed)
    if not chosen:
        raise ValueError("selfpico: no snippets selected (written=false and package_count=0)")
    return chosen


@task(name="selfpico-execute-batch")
def execute_batch(
    snippets: list[Snippet],
    predictor_cfg: PredictorConfig,
    llm_cfg: LLMConfig,
    sandbox: SandboxLimits,
    max_runs: int,
    max_retries: int,
    explore: int,
) -> list[dict]:
    """Execute a batch of snippets with one predictor; every run happens in the sandbox. The LLM is built
    here from its config, so the task also runs on a Dask worker."""
    llm = build_llm(llm_cfg) if predictor_needs_llm(predictor_cfg) else None
    predictor = build_predictor(predictor_cfg, llm, tuned_model=bool(llm_cfg.model_path))
    box = Sandbox(sandbox)
    reports = [
        execute_snippet(s, predictor, box, max_runs=max_runs, max_retries=max_retries, explore=explore).as_dict()
        for s in snippets
    ]
    usage = llm.usage.as_dict() if llm is not None else {}
    for report in reports:
        report["origin"] = next(s.origin for s in snippets if s.id == report["snippet_id"])
        report["expected_error"] = next(s.expected_error for s in snippets if s.id == report["snippet_id"])
    return [{**r, "batch_llm_usage": usage} for r in reports]


@task(name="selfpico-report", cache_policy=NO_CACHE)
def report_coverage(batches: list[list[dict]], predictor_cfg: PredictorConfig, tracker: Tracker) -> dict[str, float]:
    """Per-snippet coverage curve, the snippet table, the reports and a histogram to MLflow; the summary
    (line coverage, errors found, LLM usage summed over the batches) back."""
    reports = [report for batch in batches for report in batch]
    predictor = predictor_cfg._target_.rsplit(".", 1)[-1]
    for step, report in enumerate(reports):
        tracker.log_metrics({"snippet_coverage": report["coverage"]}, step=step)
    usage: dict[str, float] = {}
    for batch in batches:
        for key, value in (batch[0]["batch_llm_usage"] if batch else {}).items():
            usage[f"llm.{key}"] = usage.get(f"llm.{key}", 0) + value
    tracker.log_text(snippet_table(reports), "selfpico/snippets.md")
    tracker.log_dict([{k: v for k, v in r.items() if k != "batch_llm_usage"} for r in reports], "selfpico/reports.json")
    tracker.log_figure(coverage_figure(reports, predictor), "selfpico/coverage_hist.png")
    summary = summarize(reports) | usage
    print(f"selfpico[{predictor}]: line coverage {summary['line_coverage']:.1%} over {len(reports)} snippets")
    return summary
