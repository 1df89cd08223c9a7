"""The `intercode` flow end to end through Hydra, Prefect and MLflow, on a tiny config."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from components.sandbox import isolation_mode
from mlsys.flow import compose, run

pytestmark = pytest.mark.skipif(isolation_mode() is None, reason="needs the namespace sandbox")


def test_flow_runs_gold_and_scripted_policies(prefect_harness, flow_overrides, mlflow_uri):
    result = run(compose("intercode", flow_overrides + ["ic_policy=gold", "tasks_per_env=2", "runner.max_workers=2"]))
    assert result["metrics"]["success_rate"] == 1.0 and result["metrics"]["episodes"] == 4.0
    client = MlflowClient(mlflow_uri)
    run_data = client.get_run(result["run_id"]).data
    assert run_data.params["ic_policy._target_"] == "components.intercode.policies.GoldReplay"
    assert run_data.params["tasks_per_env"] == "2"
    assert run_data.metrics["sql.success_rate"] == 1.0 and run_data.metrics["bash.mean_reward"] == 1.0
    artifacts = {f.path for f in client.list_artifacts(result["run_id"], "tables")}
    assert {"tables/summary.json", "tables/summary.md"} <= artifacts
    lines = client.download_artifacts(result["run_id"], "trajectories/sql.jsonl")
    episodes = [json.loads(line) for line in open(lines)]
    assert len(episodes) == 2 and all(e["policy"] == "gold" and e["turns"] for e in episodes)

    # the LLM path with the scripted backend (plumbing only): one wrong query per episode
    scripted = run(
        compose(
            "intercode",
            flow_overrides
            + [
                "ic_policy=single_turn",
                "llm=scripted",
                "llm.responses=['```sql\nSELECT 1\n```']",
                "envs=[sql]",
                "task_ids=[sql-store-00]",
                "+ic_policy@compare_policies.gold=gold",  # played on the same episode, reported as gold.*
            ],
        )
    )
    assert scripted["metrics"]["success_rate"] == 0.0 and scripted["metrics"]["episodes"] == 1.0
    assert client.get_run(scripted["run_id"]).data.metrics["sql.invalid_action_fraction"] == 0.0
    assert scripted["metrics"]["gold.success_rate"] == 1.0 and scripted["metrics"]["gold.episodes"] == 1.0
    gold_lines = client.download_artifacts(scripted["run_id"], "trajectories/gold/sql.jsonl")
    assert [json.loads(line)["task_id"] for line in open(gold_lines)] == ["sql-store-00"]
    table = open(client.download_artifacts(scripted["run_id"], "tables/summary.md")).read()
    assert "| single_turn | sql | all | 1 |" in table and "| gold | sql | all | 1 | 1.000 |" in table


def test_bad_config_is_named(flow_overrides):
    with pytest.raises(Exception, match="tasks_per_enw"):
        compose("intercode", flow_overrides + ["tasks_per_enw=3"])
