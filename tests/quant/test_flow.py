"""End to end: the quantize flow through Hydra compose + Prefect + MLflow on a tiny GPT."""

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from components.lm.model import GPT, GPTConfig
from components.quant import QuantLinear
from components.quant.model import load_quantized
from mlsys.flow import compose, run
from mlsys.tracking import load_registered_model_dir


@pytest.fixture
def tiny_gpt(tmp_path):
    torch.manual_seed(0)
    # SmolLM2's vocabulary (the flow tokenizes real text with it), a tiny body.
    return GPT(GPTConfig(vocab_size=49152, block_size=64, n_layer=2, n_head=2, n_embd=64)).save(tmp_path / "gpt")


def test_quantize_flow_end_to_end(prefect_harness, flow_overrides, mlflow_uri, tiny_gpt):
    cfg = compose(
        "quantize",
        flow_overrides
        + [
            f"source={tiny_gpt}",
            "baselines=[fp32,rtn2,rtn4]",
            "quant_method=gptq_mixed",
            "quant.budget=null",
            "quant_method.bit_budget=3.5",  # a 64-wide toy: the group-32 metadata alone costs 1.25 bits/weight
            "eval.context=32",
            "eval.windows=2",
            "eval.calibration_windows=2",
            "speed.matvec_repeats=2",
            "speed.decode_tokens=2",
            "speed.bandwidth_mib=16",
            "registered_name=test-gpt-mixed",
        ],
    )
    result = run(cfg)
    metrics = result["metrics"]
    assert 3.25 < metrics["bits_per_weight"] <= 3.5  # above plain 2-bit, within the budget
    assert metrics["reload_max_abs_logit_diff"] == 0.0
    run_ = MlflowClient(mlflow_uri).get_run(result["run_id"])
    assert run_.data.params["quant_method.method"] == "gptq"
    assert run_.data.params["eval.context"] == "32"
    assert run_.data.metrics["perplexity"] > 1.0
    assert run_.data.tags["registered_model"] == "test-gpt-mixed"
    artifacts = {a.path for a in MlflowClient(mlflow_uri).list_artifacts(result["run_id"], "tables")}
    assert {"tables/quantize.json", "tables/quantize.md"} <= artifacts
    table = json.loads(
        MlflowClient(mlflow_uri).download_artifacts(result["run_id"], "tables/quantize.json")
        and Path(MlflowClient(mlflow_uri).download_artifacts(result["run_id"], "tables/quantize.json")).read_text()
    )
    methods = [row["method"] for row in table["perplexity"]]
    assert methods == ["fp32", "rtn2", "rtn4", "gptq_mixed"]
    bits = {row["method"]: row["bits_per_weight"] for row in table["perplexity"]}
    assert bits["rtn2"] < bits["gptq_mixed"] <= 3.5 < bits["rtn4"] < bits["fp32"]
    assert run_.data.params["quant_method.score"] == "fisher"
    # the registered model loads back as a QuantLinear model (what `serve` does)

    folder = load_registered_model_dir("test-gpt-mixed@candidate", mlflow_uri)  # not promoted: load the candidate
    model = load_quantized(folder)
    assert any(isinstance(m, QuantLinear) for m in model.modules())


def test_quantize_flow_spends_a_whole_model_budget_and_saves_the_head_bits(
    prefect_harness, flow_overrides, mlflow_uri, tiny_gpt
):
    cfg = compose(
        "quantize",
        flow_overrides
        + [
            f"source={tiny_gpt}",
            "baselines=[rtn4]",
            "quant_method=mixed",
            "quant.budget=3.71",
            "eval.context=32",
            "eval.windows=2",
            "eval.calibration_windows=2",
            "speed.matvec_repeats=1",
            "speed.decode_tokens=0",
            "speed.bandwidth_mib=16",
            "registered_name=test-gpt-budget",
        ],
    )
    result = run(cfg)
    metrics = result["metrics"]
    # the tied 49152 x 64 head is 97% of this toy: the budget counts it, the packed-layer figure does not. A 4-bit
    # head (5.25 bits/weight with its row bases) does not fit, so the head takes 2 bits and every layer 4 bits.
    assert 3.25 < metrics["bits_per_weight_all"] <= 3.71
    assert metrics["bits_per_weight"] > 4.5

    folder = load_registered_model_dir("test-gpt-budget@candidate", mlflow_uri)  # not promoted: the candidate
    meta = json.loads((Path(folder) / "quant_meta.json").read_text())
    assert meta["spec"]["head_bits"] == 2 and meta["spec"]["score"] == "fisher"
    model = load_quantized(folder)
    head = model.lm_head.weight.detach()
    original = GPT.from_folder(tiny_gpt).lm_head.weight.detach()
    # the saved head holds the dequantized values: few distinct values per group of 32
    group = head[0, :32]
    assert len(torch.unique(group)) <= 2 ** meta["spec"]["head_bits"]
    assert not torch.equal(head, original)


def test_wrong_key_and_bad_method_fail_clearly(flow_overrides):
    with pytest.raises(Exception, match="frac_hi"):
        compose("quantize", flow_overrides + ["quant_method.frac_hi=0.3"])
    with pytest.raises(Exception, match="no_such"):
        compose("quantize", flow_overrides + ["quant_method=no_such"])
