"""The Flower driver: FedCompass's scheduler over real ClientApps in Flower's simulation engine (Ray).

Slow (Ray start-up): `pytest -m slow tests/federated/test_fed_flower.py`.
"""

import json
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mlsys.flow import compose, run

# Tiny local rounds and a fast emulated clock, shared by both drivers' runs.
TINY_FLOWER = [
    "driver=flower",
    "fed_strategy.q_max=8",
    "fed_strategy.q_min=2",
    "model.width=4",
    "flower.seconds_per_virtual_second=0.02",
]


@pytest.mark.slow
def test_flower_driver_runs_compass_with_a_crashed_client(prefect_harness, flow_overrides, mlflow_uri):
    # Client 0 crashes on its first message (its ClientApp raises): the server counts it lost and
    # the two others keep the run going to 4 global updates.
    overrides = (
        flow_overrides
        + TINY_FLOWER
        + [
            "rounds=4",
            "clients=3",
            "crash_clients=[0]",
            "crash_at=0.0",
            "flower.timeout=300",
        ]
    )
    result = run(compose("federated", overrides))
    assert result["metrics"]["global_updates"] == 4
    client = MlflowClient(mlflow_uri)
    path = client.download_artifacts(result["run_id"], "federated/aggregations.json")
    records = json.loads(open(path).read())
    assert len(records) == 4 and all(0 not in r["clients"] for r in records)
    assert [m.step for m in client.get_metric_history(result["run_id"], "accuracy")] == [1, 2, 3, 4]


def _app_processes_of(workdir) -> list[str]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
            cwd = str((proc / "cwd").resolve())
        except OSError:
            continue
        if ("flower-" in cmd or "flwr-" in cmd) and cwd.startswith(str(workdir)):
            found.append(cmd)
    return found


@pytest.mark.slow
def test_flower_deployment_on_loopback_runs_and_stops_its_processes(
    prefect_harness, flow_overrides, mlflow_uri, tmp_path
):
    overrides = (
        flow_overrides + TINY_FLOWER + ["flower.backend=deployment", "rounds=3", "clients=2", "flower.timeout=400"]
    )
    result = run(compose("federated", overrides))
    assert result["metrics"]["global_updates"] == 3
    client = MlflowClient(mlflow_uri)
    assert [m.step for m in client.get_metric_history(result["run_id"], "accuracy")] == [1, 2, 3]
    assert {a.path for a in client.list_artifacts(result["run_id"], "model")} >= {"model/weights.npz"}
    time.sleep(5)
    assert _app_processes_of(tmp_path) == []  # SuperLink, SuperNodes and app processes all stopped
