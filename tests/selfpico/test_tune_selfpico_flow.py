"""`tune_selfpico` end to end at demo scale (the real SmolLM2, a step on its top layer): value search
in the sandbox -> chats -> tuning -> only the tuned tensors saved -> registered -> usable as the
LLM-guided predictor's model."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from components.checks import ConfigError
from components.llm import factory
from components.selfpico.predictors import LLMPredictor, PredictionRequest, RuleBasedPredictor
from mlsys.flow import compose, get_spec, run


@pytest.mark.slow
def test_tune_selfpico_flow_saves_registers_and_predicts(prefect_harness, flow_overrides, mlflow_uri, tmp_path):
    result = run(compose("tune_selfpico", get_spec("tune_selfpico").demo_overrides + flow_overrides))
    metrics = result["metrics"]
    assert metrics["values"] >= 1 and metrics["chats"] >= 1 and metrics["steps"] >= 1
    assert metrics["saved_mb"] < 30  # one of 30 layers + the final norm
    folder = tmp_path / "selfpico_model_demo"
    summary = json.loads((folder / "tuning.json").read_text())
    assert all(n.startswith(("model.layers.29.", "model.norm.")) for n in summary["report"]["trained"])
    assert not set(summary["modules"]) & {"textwrap", "difflib", "shlex", "fractions", "statistics", "html"}
    assert summary["data"]["per_key"] == 2 and summary["data"]["synthetic"] == 1  # how to make it again
    client = MlflowClient(tracking_uri=mlflow_uri)
    assert [v.run_id for v in client.search_model_versions("name='lm-selfpico-demo'")] == [result["run_id"]]
    predictor = LLMPredictor(
        factory.embedded(model_path=str(folder)), max_tokens=24, few_shot=False, fallback=RuleBasedPredictor()
    )
    assert predictor.predict(PredictionRequest("name#rows", "for r in rows:\n    print(r['a'])\n", "")) is not None


def test_benchmark_modules_are_refused_for_tuning(flow_overrides):
    with pytest.raises(ConfigError, match="data.modules.*textwrap"):
        compose("tune_selfpico", flow_overrides + ["data.modules=[textwrap,csv]"])
