"""The selfpico flow end to end on a tiny config, through compose/run, checked in MLflow; its predictor
options built from their config."""

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from components.llm import ScriptedLLM
from components.selfpico.config import PredictorConfig, build_predictor, predictor_needs_llm
from components.selfpico.predictors import LLMPredictor, RuleBasedPredictor
from mlsys.flow import compose, run

CONF_PREDICTORS = Path(__file__).resolve().parents[2] / "conf" / "sp_predictor"


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


def test_every_predictor_option_builds_and_only_the_llm_one_takes_the_llm():
    built = {}
    for option in sorted(CONF_PREDICTORS.glob("*.yaml")):
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PredictorConfig), OmegaConf.load(option)))
        llm = ScriptedLLM(["1"]) if predictor_needs_llm(cfg) else None
        built[option.stem] = build_predictor(cfg, llm)
    assert {name: p.name for name, p in built.items()} == {
        "as_is": "as_is",
        "llm": "llm",
        "naive": "naive",
        "rule_based": "rule_based",
    }
    guided = built["llm"]
    assert isinstance(guided, LLMPredictor) and guided.max_tokens == 48 and guided.few_shot
    assert isinstance(guided.fallback, RuleBasedPredictor)  # the value when the replies hold none


def test_a_tuned_model_is_asked_zero_shot_unless_told_otherwise():
    cfg = PredictorConfig("components.selfpico.predictors.LLMPredictor")
    assert not build_predictor(cfg, ScriptedLLM(["1"]), tuned_model=True).few_shot
    cfg = PredictorConfig("components.selfpico.predictors.LLMPredictor", few_shot=True)
    assert build_predictor(cfg, ScriptedLLM(["1"]), tuned_model=True).few_shot
    with pytest.raises(ValueError, match="needs an LLM"):
        build_predictor(cfg)


def test_bad_predictor_and_sandbox_values_fail_at_composition_naming_the_key(flow_overrides):
    with pytest.raises(Exception, match=r"predictor._target_=.*NoSuchPredictor.*names no Predictor class"):
        compose("selfpico", flow_overrides + ["predictor._target_=components.selfpico.predictors.NoSuchPredictor"])
    with pytest.raises(Exception, match=r"sandbox.wall_seconds=0.1"):
        compose("selfpico", flow_overrides + ["sandbox.wall_seconds=0.1"])


def test_explore_and_the_retry_temperature_reach_the_loop_and_the_predictor(flow_overrides):
    with pytest.raises(Exception, match=r"explore=-1"):
        compose("selfpico", flow_overrides + ["explore=-1"])
    cfg = PredictorConfig("components.selfpico.predictors.LLMPredictor", retry_temperature=0.3)
    assert build_predictor(cfg, ScriptedLLM(["1"])).retry_temperature == 0.3
