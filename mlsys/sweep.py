"""A sweep (`mlsys run <flow> -m a=1,2`, or a deployment run with `multirun=true`): every member a
nested flow run and a nested MLflow run under one parent run, which holds the comparison (table,
plot, each member's metrics stepped by member index, the swept values as params)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from mlsys.artifacts import publish_table
from mlsys.compose import InvalidConfig, compose_parameters, describe_config_error, is_config_error, sweep_members
from mlsys.tracking import Tracker, close_run, flatten, open_run

if TYPE_CHECKING:
    from mlsys.flow import FlowSpec


def run_sweep(spec: FlowSpec, config: Any, overrides: list[str]) -> dict:
    """Check every member's config, run the members, record the comparison on the parent run."""
    try:
        members = sweep_members(overrides)
    except Exception as err:
        if not is_config_error(err):
            raise
        raise InvalidConfig(describe_config_error(spec.name, err)) from err
    typed = [compose_parameters(spec, config, m) for m in members]  # every member checked before any runs
    swept = [o.split("=", 1)[0] for o in overrides if "," in o.split("=", 1)[-1]]
    first = typed[0].tracking
    parent = open_run(
        first.uri,
        first.experiment or spec.name,
        run_name=f"{spec.name} sweep {' '.join(swept) or len(members)}",
        parent_run_id=first.parent_run_id,
        tags={
            "flow": spec.name,
            "sweep": "true",
            "prefect.flow_run_id": flow_run.id,
            "prefect.flow_run_name": flow_run.name,
        },
    )
    link = parent.ui_link(first.ui)
    get_run_logger().info("sweep of %d members, MLflow parent run %s: %s", len(members), parent.run_id, link)
    try:
        rows = [
            _run_member(spec, config, member, swept, index, len(members), parent)
            for index, member in enumerate(members, 1)
        ]
        parent.log_comparison(rows, spec.summary_metric, swept)
        publish_table(f"{spec.name}-sweep", rows, f"{spec.name} sweep: one row per member; MLflow {link}")
    except BaseException:
        close_run(parent, failed=True)
        raise
    failed = [r for r in rows if r["status"] != "ok"]
    close_run(parent, failed=bool(failed))
    if failed:
        raise RuntimeError(
            f"{spec.name} sweep: {len(failed)} of {len(rows)} member(s) failed: "
            + "; ".join(r["status"] for r in failed)
        )
    return {
        "flow": spec.name,
        "run_id": parent.run_id,
        "experiment_id": parent.experiment_id,
        "metrics": {},
        "members": rows,
        "link": link,
    }


def _run_member(
    spec: FlowSpec, config: Any, member: list[str], swept: list[str], index: int, total: int, parent: Tracker
) -> dict:
    """One member as a nested flow run labelled `<flow> [i/n] <swept values>`; its row of the comparison."""
    shown = [o for o in member if o.split("=", 1)[0] in swept] or member
    get_run_logger().info("sweep member %d/%d: %s", index, total, " ".join(shown))
    row: dict[str, Any] = {"member": index, **{o.split("=", 1)[0]: o.split("=", 1)[1] for o in shown}}
    try:
        result = spec.flow.with_options(flow_run_name=f"{spec.name} [{index}/{total}] {' '.join(shown)}")(
            config=config, overrides=member + [f"tracking.parent_run_id={parent.run_id}"]
        )
        row.update({"status": "ok", **flatten(result["metrics"]), "run_id": result["run_id"]})
    except Exception as err:  # one failing member must not hide the others
        row.update({"status": f"FAILED: {type(err).__name__}: {str(err)[:100]}"})
    return row
