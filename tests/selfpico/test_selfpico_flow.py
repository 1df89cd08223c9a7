"""The selfpico flow end to end on a tiny config, through compose/run, checked in MLflow."""

from mlflow.tracking import MlflowClient

from mlsys.flow import compose, run


def test_selfpico_flow_logs_coverage_and_tables(prefect_harness, flow_overrides, mlflow_uri):
    result = run(
        compose(
            "selfpico",
            flow_overrides
            + ["written_limit=4", "package_count=2", "batch_size=3", "sp_predictor@predictor=rule_based"],
        )
    )
    metrics = result["metrics"]
    assert metrics["snippets"] == 6 and 0 < metrics["line_coverage"] <= 1
    client = MlflowClient(tracking_uri=mlflow_uri)
    run_ = client.get_run(result["run_id"])
    assert run_.data.params["predictor._target_"].endswith("RuleBasedPredictor")
    assert len(client.get_metric_history(result["run_id"], "snippet_coverage")) == 6
    names = {a.path for a in client.list_artifacts(result["run_id"], "selfpico")}
    assert {"selfpico/reports.json", "selfpico/snippets.md", "selfpico/coverage_hist.png"} <= names
