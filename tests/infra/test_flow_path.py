"""The whole path on a real system flow: CLI + overrides -> Hydra -> Prefect -> MLflow, on threads and on Dask."""

from __future__ import annotations

import subprocess
import sys

from distributed import LocalCluster
from mlflow.tracking import MlflowClient

from mlsys.cli import main as cli_main
from mlsys.flow import compose, run
from tests.infra.flow_under_test import FAST_OVERRIDES, FLOW, METRIC


def _runs(uri: str, experiment: str = FLOW):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client, (client.search_runs([exp.experiment_id], order_by=["start_time DESC"]) if exp else [])


def test_cli_run_with_overrides_logs_params_metrics_artifacts(prefect_harness, flow_overrides, mlflow_uri):
    cli_main(["run", FLOW, *FAST_OVERRIDES, *flow_overrides, "seed=7", "tracking.run_name=cli-e2e"])
    client, runs = _runs(mlflow_uri)
    run_ = next(r for r in runs if r.info.run_name == "cli-e2e")
    assert run_.info.status == "FINISHED"
    assert run_.data.params["seed"] == "7"
    for override in FAST_OVERRIDES:
        key, value = override.split("=", 1)
        assert run_.data.params[key] == value
    assert METRIC in run_.data.metrics
    assert run_.data.tags["prefect.flow_run_id"]
    artifacts = client.list_artifacts(run_.info.run_id)
    assert artifacts, "the flow logged no artifact"


def test_runner_dask_sends_tasks_to_the_cluster(prefect_harness, flow_overrides, mlflow_uri):
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster:
        cfg = compose(
            FLOW, FAST_OVERRIDES + flow_overrides + ["runner=dask", f"runner.address={cluster.scheduler_address}"]
        )
        result = run(cfg)
        executed = sum(
            prefix.n_tasks if hasattr(prefix, "n_tasks") else 1 for prefix in cluster.scheduler.task_prefixes.values()
        )
    assert result["metrics"][METRIC] is not None
    assert executed > 0, "no task reached the Dask scheduler"
    _, runs = _runs(mlflow_uri)
    dask_run = next(r for r in runs if r.info.run_id == result["run_id"])
    assert dask_run.data.params["runner._target_"] == "mlsys.runners.dask_runner"


def test_sweep_nests_members_under_one_parent(prefect_harness, flow_overrides, mlflow_uri):
    cli_main(["run", FLOW, "-m", "seed=11,12", *FAST_OVERRIDES, *flow_overrides])
    _, runs = _runs(mlflow_uri)
    members = [r for r in runs if r.data.params.get("seed") in {"11", "12"}]
    assert len(members) == 2
    parents = {r.data.tags.get("mlflow.parentRunId") for r in members}
    assert len(parents) == 1 and None not in parents
    parent_id = parents.pop()
    parent = next(r for r in runs if r.info.run_id == parent_id)
    assert parent.data.tags.get("sweep") == "true" and parent.info.status == "FINISHED"


def test_suite_nests_member_runs(prefect_harness, flow_overrides, mlflow_uri):
    result = run(compose("suite", flow_overrides + [f"flows=[{FLOW}]"]))
    _, member_runs = _runs(mlflow_uri)
    nested = [r for r in member_runs if r.data.tags.get("mlflow.parentRunId") == result["run_id"]]
    assert len(nested) == 1 and nested[0].info.status == "FINISHED"


def test_cli_rejects_unknown_key_with_its_name():
    proc = subprocess.run(
        [sys.executable, "-m", "mlsys", "run", FLOW, "definitely_not_a_key=1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "definitely_not_a_key" in proc.stderr + proc.stdout


def test_cli_prints_composed_config_without_running():
    proc = subprocess.run(
        [sys.executable, "-m", "mlsys", "run", FLOW, "--cfg", "job", "seed=5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "seed: 5" in proc.stdout and "runner:" in proc.stdout


def test_cli_lists_flows_and_groups():
    proc = subprocess.run([sys.executable, "-m", "mlsys", "list"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and FLOW in proc.stdout and "runner" in proc.stdout
