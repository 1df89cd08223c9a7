"""`tune_agent` end to end at demo scale (the real SmolLM2, 2 optimizer steps on its top layer):
transcripts -> tuning -> only the tuned layers saved -> registered in MLflow -> loadable by the
embedded backend, with every other weight the packaged model's."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import save_file

from components.compiler.tuning import TranscriptConfig
from components.lm import smollm2
from mlsys.flow import compose, get_spec, run
from tasks.tune_agent import collect_transcripts


def test_tune_agent_flow_saves_registers_and_loads_the_tuned_layers(
    prefect_harness, flow_overrides, mlflow_uri, tmp_path
):

    result = run(compose("tune_agent", get_spec("tune_agent").demo_overrides + flow_overrides))
    metrics = result["metrics"]
    # one knowledge base, one question per template: a plan, a join and 2 ReAct calls per question
    assert 40 <= metrics["transcripts"] <= 64 and metrics["steps"] >= 1 and metrics["tokens"] > 10_000
    assert metrics["saved_mb"] < 30  # one of 30 layers + the final norm, not the 540 MB model

    folder = tmp_path / "agent_model_demo"
    summary = json.loads((folder / "tuning.json").read_text())
    trained = summary["report"]["trained"]
    assert trained and all(n.startswith(("model.layers.29.", "model.norm.")) for n in trained)
    tuned, base = smollm2.load_model(folder=folder), smollm2.load_model()
    assert not torch.equal(tuned.model.layers[29].mlp.up_proj.weight, base.model.layers[29].mlp.up_proj.weight)
    assert torch.equal(tuned.model.layers[28].mlp.up_proj.weight, base.model.layers[28].mlp.up_proj.weight)
    assert torch.equal(tuned.lm_head.weight, base.lm_head.weight)

    client = MlflowClient(tracking_uri=mlflow_uri)
    versions = client.search_model_versions("name='lm-agent-demo'")
    assert [v.run_id for v in versions] == [result["run_id"]]
    listed = {a.path for a in client.list_artifacts(result["run_id"])}
    assert {"tuning.json", "model", "samples"} <= listed
    assert len(client.get_metric_history(result["run_id"], "reply_loss")) >= 1


def test_tuned_folders_reject_foreign_tensors_and_seed_zero(tmp_path):
    save_file({"model.layers.99.mlp.up_proj.weight": torch.zeros(2, 2)}, str(tmp_path / smollm2.TUNED_WEIGHTS))
    with pytest.raises(ValueError, match="layers.99"):
        smollm2.load_model(folder=tmp_path)
    with pytest.raises(ValueError, match="must not include 0"):
        collect_transcripts.fn(TranscriptConfig(kb_seeds=[0, 1]))
