"""`compile_calls` end to end through mlsys.flow.compose/run on a tiny config (scripted LLM: the
flow's plumbing, not a model): MLflow params/metrics/artifacts, and every tool call a Prefect task run."""

import json
import time

from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from mlsys.flow import compose, run


def test_compile_calls_flow_end_to_end(prefect_harness, flow_overrides, mlflow_uri):
    overrides = flow_overrides + [
        "llm=scripted",
        "llm.script=components.compiler.scripted.parallelqa_oracle",
        "questions=3",
        "tools.search_latency_s=0.05",
        "tools.calculate_latency_s=0.0",
        "methods=[llmcompiler,react,parallel_fc]",
    ]
    result = run(compose("compile_calls", overrides))
    metrics = result["metrics"]
    assert metrics["llmcompiler_accuracy"] == metrics["react_accuracy"] == metrics["parallel_fc_accuracy"] == 1.0
    assert metrics["llmcompiler_llm_calls_mean"] == 2 and metrics["speedup"] > 0
    assert metrics["speedup_vs_parallel_fc"] > 0 and metrics["accuracy_delta_vs_parallel_fc"] == 0

    client = MlflowClient(tracking_uri=mlflow_uri)
    mlrun = client.get_run(result["run_id"])
    assert mlrun.data.params["llm._target_"] == "components.llm.factory.scripted"
    assert mlrun.data.params["tools.search_latency_s"] == "0.05"
    assert mlrun.data.metrics["llm.calls"] > 6 and "react.latency_s" in mlrun.data.metrics
    assert len(client.get_metric_history(result["run_id"], "llmcompiler.latency_s")) == 3
    listed = {a.path for a in client.list_artifacts(result["run_id"])}
    assert {"inputs.json", "results", "traces"} <= listed
    answers = json.loads(open(client.download_artifacts(result["run_id"], "results/answers.json")).read())
    assert len(answers) == 9 and all(a["correct"] for a in answers)
    trace = json.loads(
        open(client.download_artifacts(result["run_id"], "traces/sum_population-0.llmcompiler.json")).read()
    )
    assert "1. search(" in trace["trace"][0]["plan"] and trace["trace"][0]["tasks"][2]["ok"]

    # Every dispatched tool call ran as a Prefect task run of this flow run.

    flow_run_id = mlrun.data.tags["prefect.flow_run_id"]
    expected = sum(a["tool_calls"] for a in answers)
    deadline = time.monotonic() + 60
    while True:  # task-run states reach the API asynchronously: wait until they have all arrived
        with get_client(sync_client=True) as prefect_client:
            task_runs = prefect_client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
        tool_runs = [t for t in task_runs if t.name in ("search", "calculate", "python")]  # task_run_name="{tool}"
        if (
            len(tool_runs) >= expected and all(t.state and t.state.is_completed() for t in tool_runs)
        ) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(tool_runs) == expected
    assert sum(t.name == "warm-up" for t in task_runs) == 4  # runner=local: max_workers=4 warm-up calls
    assert all(t.state.is_completed() for t in tool_runs)
