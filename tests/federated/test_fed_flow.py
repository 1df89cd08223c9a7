"""The `federated` flow end to end through Hydra compose + Prefect + MLflow, on a tiny config."""

import json

import pytest
from mlflow.tracking import MlflowClient

from mlsys.flow import compose, run

TINY = ["rounds=4", "clients=3", "fed_strategy.q_max=8", "fed_strategy.q_min=2", "model.width=4"]


def test_flow_logs_accuracy_vs_time_to_mlflow(prefect_harness, flow_overrides, mlflow_uri):
    result = run(compose("federated", flow_overrides + TINY))
    assert result["metrics"]["global_updates"] == 4
    assert 0.0 < result["metrics"]["top_accuracy"] <= 1.0
    client = MlflowClient(mlflow_uri)
    mlrun = client.get_run(result["run_id"])
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.params["fed_strategy.name"] == "fedcompass" and mlrun.data.params["clients"] == "3"
    history = client.get_metric_history(result["run_id"], "accuracy")
    assert [m.step for m in history] == [1, 2, 3, 4]
    times = [m.value for m in client.get_metric_history(result["run_id"], "virtual_time")]
    assert times == sorted(times) and times[0] > 0
    assert mlrun.data.metrics["top_accuracy"] == pytest.approx(max(m.value for m in history))
    artifacts = {a.path for a in client.list_artifacts(result["run_id"], "federated")}
    assert {"federated/history.json", "federated/aggregations.json", "federated/accuracy_vs_time.png"} <= artifacts
    assert {a.path for a in client.list_artifacts(result["run_id"], "model")} >= {
        "model/weights.npz",
        "model/model.json",
    }
    path = client.download_artifacts(result["run_id"], "federated/aggregations.json")
    records = json.loads(open(path).read())
    assert len(records) == 4 and all("staleness" in r for r in records)


def test_wrong_keys_and_values_fail_with_their_name(flow_overrides):
    with pytest.raises(Exception, match="q_maxx"):
        compose("federated", flow_overrides + ["fed_strategy.q_maxx=3"])
    with pytest.raises(Exception, match="fedprox"):
        compose("federated", flow_overrides + ["fed_strategy=fedprox"])
    with pytest.raises(Exception, match="crash_clients"):  # checked at composition (FederatedConfig.__post_init__)
        compose("federated", flow_overrides + ["clients=3", "crash_clients=[7]"])


@pytest.mark.parametrize(
    "strategy,speed,data",
    [
        ("fedavg", "homogeneous", "mnist1d"),
        ("fedasync", "normal", "digits"),
        ("fedbuff", "exponential", "mnist1d"),
        ("fedcompass", "drifting", "digits"),
    ],
)
def test_every_group_option_composes(flow_overrides, strategy, speed, data):
    cfg = compose("federated", flow_overrides + [f"fed_strategy={strategy}", f"fed_speed={speed}", f"fed_data={data}"])
    assert (cfg.fed_strategy.name, cfg.fed_data.name) == (strategy, data)
    assert cfg.fed_speed.kind == ("normal" if speed == "drifting" else speed)
    assert (cfg.fed_speed.drift_time is not None) == (speed == "drifting")
