"""The `serve` and `decode_bench` flows end to end (Hydra compose -> Prefect -> MLflow) on tiny models."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from components.decoding.engine import build_decoder
from components.decoding.models import layer_skip_draft, tiny_llama
from components.lm.model import GPT, GPTConfig
from components.lm.smollm2 import load_tokenizer
from components.quant import QuantLinear, QuantSpec
from components.quant.model import load_base_model, load_quantized, quantize_model, save_quantized
from components.serving.text import HFTextCodec
from mlsys.flow import compose, get_spec, run
from mlsys.tracking import close_run, open_run

TINY = ["models.target=tiny_random", "models.draft=layerskip", "models.draft_layers=1"]


def test_serve_flow_serves_checks_itself_and_logs(prefect_harness, flow_overrides, mlflow_uri):
    cfg = compose(
        "serve",
        flow_overrides
        + TINY
        + [
            "models.served_name=tiny",
            "port=0",
            "duration_s=0",
            "load_test_requests=10",
            "smoke_max_tokens=8",
            "decoding=pearl",
            "decoding.gamma=3",
        ],
    )
    assert cfg.host == "127.0.0.1" and cfg.decoding.method == "pearl"
    result = run(cfg)
    client = MlflowClient(tracking_uri=mlflow_uri)
    mlrun = client.get_run(result["run_id"])
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.params["decoding.method"] == "pearl" and mlrun.data.params["models.target"] == "tiny_random"
    metrics = mlrun.data.metrics
    assert metrics["load_errors"] == 0 and metrics["served_requests"] == 11  # smoke + load
    assert metrics["gamma"] == 3 and metrics["load_p99_s"] >= metrics["load_p50_s"] > 0
    artifacts = {a.path for a in client.list_artifacts(result["run_id"])}
    assert {"load_test.json", "smoke"} <= artifacts
    assert mlrun.data.tags["draft_source"] == "layerskip"


def test_decode_bench_flow_logs_every_method(prefect_harness, flow_overrides, mlflow_uri):
    small = ["bench.code_prompts=1", "bench.chat_prompts=1", "bench.max_new_tokens=16", "bench.sd_gammas=[2,4]"]
    result = run(compose("decode_bench", flow_overrides + TINY + small + ["bench.repeats=1"]))
    metrics = MlflowClient(tracking_uri=mlflow_uri).get_run(result["run_id"]).data.metrics
    assert metrics["greedy_mismatches"] == 0  # every speculative method reproduced AR's greedy tokens
    for key in (
        "ar_tokens_per_s",
        "pearl_speedup_vs_ar",
        "pearl_speedup_vs_sd",
        "leviathan_bound_sd_best_gamma",
        "pearl_model_vs_ar",
        "sd_model_vs_ar",
        "pearl_no_pre_speedup_vs_ar",
        "pearl_no_post_speedup_vs_ar",
        "hf_assisted_speedup_vs_ar",
    ):
        assert key in metrics and metrics[key] > 0, key
    path = MlflowClient(tracking_uri=mlflow_uri).download_artifacts(result["run_id"], "decode_bench.json")
    methods = json.load(open(path))["methods"]
    assert set(methods) >= {"ar", "sd_g2", "sd_g4", "pearl", "pearl_no_pre", "pearl_no_post", "hf_assisted"}
    assert (
        methods["pearl"]["target_forwards"] < methods["ar"]["target_forwards"]
        or methods["pearl"]["acceptance_rate"] == 0
    )
    alpha_map = json.load(
        open(MlflowClient(tracking_uri=mlflow_uri).download_artifacts(result["run_id"], "alpha_map.json"))
    )
    assert alpha_map["goal_vs_ar"] == 2.0 and len(alpha_map["curve"]) >= 10
    assert all(set(point["measured"]) == {"pearl_vs_ar", "pearl_vs_sd", "both"} for point in alpha_map["curve"])


@pytest.mark.parametrize(
    "bad, fragment",
    [
        (["decoding=beam"], "beam"),
        (["models.nonsense=1"], "nonsense"),
        (["port=abc"], "port"),
        (["port=-5"], "port=-5: must be 1-65535"),
        (["port=65536"], "port=65536"),
        (["max_queue=-1"], "max_queue=-1"),
        (["max_queue=0"], "max_queue=0"),
        (["connections.max_connections=0"], "max_connections"),
        (["connections.drain_s=-1"], "drain_s"),
        (["decoding.method=beam"], "decoding.method"),
        (["decoding.gamma=0"], "decoding.gamma"),
        (["models.target=gpt9"], "models.target"),
        (["load_test_requests=300", "max_queue=10"], "load_test_requests"),
        (["requests.max_body_bytes=10"], "max_body_bytes"),
        (["connections.header_timeout_s=0"], "header_timeout_s"),
    ],
)
def test_bad_config_fails_at_composition(bad, fragment):
    with pytest.raises(Exception, match=fragment):
        compose("serve", bad)


@pytest.mark.parametrize("option", ["ar", "sd", "pearl", "pearl_no_pre", "pearl_no_post"])
def test_every_decoding_option_composes_and_builds(option):
    cfg = compose("serve", [f"decoding={option}"])
    assert cfg.decoding.method == option
    target = tiny_llama(vocab_size=32, layers=2)
    decoder = build_decoder(cfg.decoding.method, target, layer_skip_draft(target, 1), gamma=2)
    try:
        assert decoder.method == option and len(decoder.generate([1, 2, 3], 4)[0]) == 4
    finally:
        decoder.close()


def test_serve_decodes_a_quantized_target_losslessly(prefect_harness, flow_overrides, mlflow_uri, tmp_path):
    """The quantize flow's registered model as the served target, resolved by name; PEARL's greedy reply
    equals AR on the same quantized model."""

    torch.manual_seed(0)  # SmolLM2's vocabulary (the served tokenizer), a tiny body
    gpt = GPT(GPTConfig(vocab_size=49152, block_size=128, n_layer=2, n_head=2, n_embd=64)).save(tmp_path / "gpt")
    model, base = load_base_model(str(gpt))
    spec = QuantSpec(method="rtn", frac_high=0.25, group_size=32)
    quantize_model(model, spec, mode="naive")
    folder = save_quantized(model, tmp_path / "quantized", spec, base)
    tracker = open_run(mlflow_uri, "quantize")  # registered the way the quantize flow does it
    tracker.log_model_dir(folder, "quantized_model", registered_name="tiny-quantized")
    close_run(tracker)
    prompt = "Write a Python function that reverses a string."
    cfg = compose(
        "serve",
        flow_overrides
        + [
            "models.target=quantized",
            "models.target_registered_name=tiny-quantized@candidate",
            "models.draft=gpt_folder",
            f"models.draft_path={gpt}",
            "models.served_name=tiny-quantized",
            "port=0",
            "duration_s=0",
            f"smoke_prompt='{prompt}'",
            "smoke_max_tokens=12",
            "decoding=pearl",
            "decoding.gamma=2",
        ],
    )
    result = run(cfg)
    client = MlflowClient(tracking_uri=mlflow_uri)
    served = open(client.download_artifacts(result["run_id"], "smoke/reply.txt", str(tmp_path))).read()

    target = load_quantized(folder)
    assert any(isinstance(m, QuantLinear) for m in target.modules())
    codec = HFTextCodec(load_tokenizer())
    decoder = build_decoder("ar", target, None, gamma=1)
    try:
        ids, _ = decoder.generate(codec.chat_prompt([{"role": "user", "content": prompt}]), 12, stop_ids=codec.eos_ids)
    finally:
        decoder.close()
    assert served == codec.decode(ids) and served


def test_decode_bench_demo_decodes_the_real_target_with_prompt_lookup():
    """The suite's demo benchmarks the served native Q4_1 target, not a tiny stand-in."""
    cfg = compose("decode_bench", get_spec("decode_bench").demo_overrides)
    assert cfg.models.target == "smollm2_q4_native" and cfg.models.draft == "prompt_lookup"
    assert cfg.bench.edit_prompts >= 1 and cfg.bench.repeats == 1
