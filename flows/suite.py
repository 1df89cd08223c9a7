"""`suite`: every system flow at demo scale, in one process, as nested MLflow runs under one parent."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from mlsys.artifacts import publish_markdown
from mlsys.flow import FlowConfig, compose, discover_flows, run, system_flow
from mlsys.tracking import Tracker


@dataclass
class SuiteConfig(FlowConfig):
    flows: list[str] = field(default_factory=list)  # empty: every flow, in pipeline order; e.g. flows=[federated]
    skip: list[str] = field(default_factory=list)  # flows to leave out
    fail_fast: bool = False  # stop at the first failing flow instead of reporting all
    # flow -> the paper's claim its summary metric measures (conf/suite.yaml); shown beside the value
    claims: dict[str, str] = field(default_factory=dict)


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


def _claim_cell(claim: str | None, metric: str) -> str:
    """The paper's claim beside what this run measured (`claims` in conf/suite.yaml, else the flow's
    `claim=` in @system_flow)."""
    return f"{claim} -> {metric}" if claim else "-"


@system_flow(name="suite", config=SuiteConfig, order=1000)
def suite(cfg: SuiteConfig, tracker: Tracker) -> dict[str, float]:
    """All system flows at demo scale as nested MLflow runs, with a summary table."""
    specs = sorted((s for s in discover_flows().values() if s.name != "suite"), key=lambda s: (s.order, s.name))
    unknown = set(cfg.flows + cfg.skip) - {s.name for s in specs}
    if unknown:
        raise ValueError(f"suite: unknown flow(s) {sorted(unknown)}; flows: {[s.name for s in specs]}")
    chosen = [s for s in specs if (not cfg.flows or s.name in cfg.flows) and s.name not in cfg.skip]
    rows, failed = [], []
    for spec in chosen:
        start = time.perf_counter()
        try:
            result = run(compose(spec.name, spec.demo_overrides + _member_overrides(cfg, tracker.run_id)))
            value = result["metrics"].get(spec.summary_metric) if spec.summary_metric else None
            metric = f"{spec.summary_metric}={value:.4g}" if isinstance(value, (int, float)) else "-"
            rows.append(
                {
                    "flow": spec.name,
                    "status": "ok",
                    "metric": metric,
                    "link": result["link"],
                    "claim": _claim_cell(cfg.claims.get(spec.name) or spec.claim, metric),
                }
            )
        except Exception as err:  # one broken member must not hide the others' results
            failed.append(spec.name)
            rows.append(
                {
                    "flow": spec.name,
                    "status": f"FAILED: {type(err).__name__}: {str(err)[:120]}",
                    "metric": "-",
                    "link": "-",
                    "claim": _claim_cell(cfg.claims.get(spec.name) or spec.claim, "-"),
                }
            )
            if cfg.fail_fast:
                rows[-1]["seconds"] = time.perf_counter() - start
                break
        rows[-1]["seconds"] = time.perf_counter() - start
        tracker.log_metrics({f"{spec.name}.seconds": rows[-1]["seconds"]})
    table = _format_table(rows)
    print("\n" + table)
    tracker.log_text(table, "suite_summary.md")
    tracker.log_dict(rows, "suite_summary.json")
    publish_markdown("suite-summary", "# Suite summary\n\n" + table, "every system flow at demo scale")
    if failed:
        raise RuntimeError(f"suite: {len(failed)} flow(s) failed: {', '.join(failed)} (table above)")
    return {"flows_ok": float(len(rows)), "seconds": float(sum(r["seconds"] for r in rows))}
