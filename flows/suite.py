"""`suite`: every system flow at demo scale, in one process, as nested MLflow runs under one parent."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from mlsys.artifacts import publish_markdown
from mlsys.flow import FlowConfig, FlowSpec, compose, discover_flows, run, system_flow
from mlsys.tracking import Tracker


@dataclass
class SuiteConfig(FlowConfig):
    flows: list[str] = field(default_factory=list)  # empty: every flow, in pipeline order; e.g. flows=[federated]
    skip: list[str] = field(default_factory=list)  # flows to leave out
    fail_fast: bool = False  # stop at the first failing flow instead of reporting all


def _member_overrides(cfg: SuiteConfig, parent_run_id: str) -> list[str]:
    """What every member inherits from the suite: MLflow store and parent, work dir, runner."""
    inherited = [
        f"tracking.parent_run_id={parent_run_id}",
        f"work_dir={cfg.work_dir}",
        f"seed={cfg.seed}",
        f"device={cfg.device}",
    ]
    if cfg.tracking.uri:
        inherited.append(f"tracking.uri={cfg.tracking.uri}")
    for key, value in asdict(cfg.runner).items():
        inherited.append(f"runner.{key}={'null' if value is None else value}")
    return inherited


def _format_table(rows: list[dict]) -> str:
    header = (
        "| flow | status | key metric | paper's claim -> measured here | seconds | MLflow run |\n"
        "|---|---|---|---|---|---|\n"
    )
    return header + "\n".join(
        f"| {r['flow']} | {r['status']} | {r['metric']} | {r['claim']} | {r['seconds']:.0f} | {r['link']} |"
        for r in rows
    )


def _claim_cell(spec: FlowSpec, metric: str, metrics: dict) -> str:
    """The paper's claim beside what this run measured (the flow's `claim=` and `measured=`)."""
    if not spec.claim:
        return "-"
    try:
        measured = spec.measured.format_map(metrics) if spec.measured else metric
    except (KeyError, ValueError):  # a metric the run did not report: the summary metric instead
        measured = metric
    return f"{spec.claim} -> {measured}"


def _chosen(cfg: SuiteConfig) -> list[FlowSpec]:
    """The member flows `flows`/`skip` pick, in pipeline order; an unknown name is an error."""
    specs = sorted((s for s in discover_flows().values() if s.name != "suite"), key=lambda s: (s.order, s.name))
    unknown = set(cfg.flows + cfg.skip) - {s.name for s in specs}
    if unknown:
        raise ValueError(f"suite: unknown flow(s) {sorted(unknown)}; flows: {[s.name for s in specs]}")
    return [s for s in specs if (not cfg.flows or s.name in cfg.flows) and s.name not in cfg.skip]


def _run_member(spec: FlowSpec, cfg: SuiteConfig, parent_run_id: str) -> dict:
    """One member at demo scale, nested under the suite's run: its row of the summary table."""
    start = time.perf_counter()
    metrics: dict = {}
    try:
        result = run(compose(spec.name, spec.demo_overrides + _member_overrides(cfg, parent_run_id)))
    except Exception as err:  # one broken member must not hide the others' results
        status, metric, link = f"FAILED: {type(err).__name__}: {str(err)[:120]}", "-", "-"
    else:
        metrics = result["metrics"]
        value = metrics.get(spec.summary_metric) if spec.summary_metric else None
        metric = f"{spec.summary_metric}={value:.4g}" if isinstance(value, (int, float)) else "-"
        status, link = "ok", result["link"]
    row = {
        "flow": spec.name,
        "status": status,
        "metric": metric,
        "link": link,
        "claim": _claim_cell(spec, metric, metrics),
    }
    return {**row, "seconds": time.perf_counter() - start}


def _report(rows: list[dict], tracker: Tracker) -> None:
    """The summary table on the console, in MLflow (markdown + JSON) and as a Prefect artifact."""
    table = _format_table(rows)
    print("\n" + table)
    tracker.log_text(table, "suite_summary.md")
    tracker.log_dict(rows, "suite_summary.json")
    publish_markdown("suite-summary", "# Suite summary\n\n" + table, "every system flow at demo scale")


@system_flow("suite", SuiteConfig, order=1000)
def suite(cfg: SuiteConfig, tracker: Tracker) -> dict[str, float]:
    """All system flows at demo scale as nested MLflow runs, with a summary table."""
    rows = []
    for spec in _chosen(cfg):
        rows.append(_run_member(spec, cfg, tracker.run_id))
        if cfg.fail_fast and rows[-1]["status"] != "ok":
            break
        tracker.log_metrics({f"{spec.name}.seconds": rows[-1]["seconds"]})
    _report(rows, tracker)
    failed = [r["flow"] for r in rows if r["status"] != "ok"]
    if failed:
        raise RuntimeError(f"suite: {len(failed)} flow(s) failed: {', '.join(failed)} (table above)")
    return {"flows_ok": float(len(rows)), "seconds": float(sum(r["seconds"] for r in rows))}
