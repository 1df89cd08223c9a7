"""Prefect tasks of the `quantize` flow: load, calibrate, quantize + evaluate, save + register, speed.

Each task is one coarse step over a whole model; models pass between them in process
(cache_policy=NO_CACHE: hashing a model's tensors for a cache key would cost more than the step).
"""

from __future__ import annotations

import copy
import re
import time
from pathlib import Path

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from components.quant import QuantSpec
from components.quant.budget import apply_head_bits, head_linear, plan_budget, whole_model_bits
from components.quant.evaluation import encode, python_docs_split, windows
from components.quant.evaluation import perplexity as perplexity_of
from components.quant.model import (
    calibrate,
    dequantized_once,
    load_base_model,
    load_quantized,
    logits_of,
    model_bits,
    quantizable_linears,
    quantize_model,
    save_quantized,
    set_mode,
    target_linears,
)
from components.quant.speed import decode_speed, matvec_by_shape, memory_bandwidth
from mlsys.environment import PROJECT_ROOT
from mlsys.tracking import Tracker, load_registered_model_dir

METHOD_DIR = PROJECT_ROOT / "conf" / "quant_method"


def method_spec(name: str) -> QuantSpec:
    """A conf/quant_method/<name>.yaml option, instantiated (used for the side-by-side baselines)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = METHOD_DIR / f"{name}.yaml"
    if not path.exists():
        options = sorted(p.stem for p in METHOD_DIR.glob("*.yaml"))
        raise ValueError(f"unknown quant method {name!r}; conf/quant_method has {options}")
    return instantiate(OmegaConf.load(path))


def needs_calibration(spec: QuantSpec) -> tuple[bool, bool, bool]:
    """(a calibration pass needed, layer Hessians needed, the loss's Fisher diagonal needed)."""
    hessian = spec.quantizes and spec.method == "gptq"
    fisher = spec.quantizes and spec.score == "fisher"
    return spec.quantizes and (hessian or fisher or spec.score in ("range_act", "hessian_error")), hessian, fisher


@task(name="quantize-load-model", cache_policy=NO_CACHE, retries=1)
def load_model(source: str, tracking_uri: str | None):
    """'smollm2', a model folder, or an MLflow registered model name (e.g. lm-draft)."""
    if source != "smollm2" and not Path(source).exists():
        get_run_logger().info("model source %r is not a folder: fetching the registered model", source)
        folder = load_registered_model_dir(source, tracking_uri)
        model, base = load_base_model(str(folder))
        base["source"] = f"registered:{source}"
        return model, base
    return load_base_model(source)


@task(name="quantize-heldout-text", cache_policy=NO_CACHE)
def heldout_windows(
    tokenizer_dir: str | None, context: int, eval_windows: int, calibration_windows: int, seed: int
) -> dict:
    from tokenizers import Tokenizer

    if tokenizer_dir is None:
        raise FileNotFoundError("no tokenizer.json beside the model nor in the SmolLM2 cache")
    tokenizer = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    calib_text, eval_text = python_docs_split(seed)
    return {
        "eval": windows(encode(tokenizer, eval_text), context, eval_windows),
        "calibration": windows(encode(tokenizer, calib_text), context, max(1, calibration_windows)),
        "source": "pydoc_data.topics (CPython docs), seeded topic split",
        "context": context,
    }


@task(name="quantize-calibrate", cache_policy=NO_CACHE)
def calibration_stats(model, batches: list, hessian: bool, fisher: bool, include_lm_head: bool) -> dict:
    return calibrate(model, batches, list(target_linears(model, include_lm_head)), hessian=hessian, fisher=fisher)


@task(name="quantize-plan-budget", cache_policy=NO_CACHE)
def budget_spec(
    model, spec: QuantSpec, budget: float, calibration: dict | None, include_lm_head: bool, layers: str | None
) -> QuantSpec:
    """`spec` re-planned to spend `budget` bits/weight over ALL weights, the head included (budget.py)."""
    if not spec.quantizes:
        raise ValueError(f"quant.budget={budget} needs a quantizing method, but quant_method={spec.name!r} keeps fp32")
    pattern = re.compile(layers) if layers else None
    chosen = (lambda n: bool(pattern.search(n))) if pattern else None
    linears = quantizable_linears(model, spec, include_lm_head, chosen)
    stats = calibration or {}
    head = head_linear(model)
    fisher = {name: stats[name]["fisher"] for name in linears if "fisher" in stats.get(name, {})}
    head_fisher = stats.get(head[0], {}).get("fisher") if head else None
    planned = plan_budget(model, linears, spec, budget, fisher, head_fisher)
    get_run_logger().info(
        "budget %.3f bits/weight: head at %s bits, %s",
        budget,
        planned.head_bits,
        f"layers at {planned.bit_budget:.3f}" if planned.bit_budget else f"share {planned.frac_high:.3f}",
    )
    return planned


@task(name="quantize-method", task_run_name="quantize-{spec.name}", cache_policy=NO_CACHE)
def quantize_and_evaluate(
    model,
    spec: QuantSpec,
    calibration: dict | None,
    eval_batches: list,
    include_lm_head: bool,
    layers: str | None,
    mode: str,
):
    """Quantize a copy of `model` with `spec` and measure its perplexity; returns (model, table row)."""
    qmodel = copy.deepcopy(model) if spec.quantizes else model
    start = time.perf_counter()
    pattern = re.compile(layers) if layers else None
    layouts = quantize_model(
        qmodel,
        spec,
        calibration,
        mode=mode,
        include_lm_head=include_lm_head,
        layer_filter=(lambda n: bool(pattern.search(n))) if pattern else None,
    )
    head = head_linear(qmodel)
    packed_head = apply_head_bits(qmodel, spec, (calibration or {}).get(head[0]) if head else None)
    quant_s = time.perf_counter() - start
    with dequantized_once(qmodel):  # evaluation feeds whole windows: dequantize once + GEMM is the fast path
        ppl = perplexity_of(qmodel, eval_batches)
    bits = model_bits(qmodel)
    row = {
        "method": spec.name,
        "quantized_layers": len(layouts),
        "quantize_seconds": quant_s,
        **{k: v for k, v in ppl.items() if not k.startswith("window_")},
        "bits_per_weight": bits["bits_per_weight"] if layouts else 32.0,
        "head_bits": spec.head_bits,
        "bits_per_weight_all": whole_model_bits(qmodel, packed_head)["bits_per_weight_all"],
        "model_mb": bits["model_bytes"] / 1e6,
        **{k: v for k, v in bits.items() if k.startswith("bits_")},
    }
    return qmodel, row


@task(name="quantize-save-register", cache_policy=NO_CACHE, retries=1)
def save_and_register(
    qmodel,
    spec: QuantSpec,
    base: dict,
    folder: str,
    tracker: Tracker,
    registered_name: str | None,
    check_batch: torch.Tensor,
    extra: dict,
) -> dict:
    """Save the folder, reload it, check it reproduces the outputs, log it and register it by name."""
    saved = save_quantized(qmodel, folder, spec, base, extra=extra)
    set_mode(qmodel, "naive")
    reloaded = load_quantized(saved, mode="naive")
    with torch.no_grad():
        diff = float((logits_of(reloaded, check_batch) - logits_of(qmodel, check_batch)).abs().max())
    disk = sum(p.stat().st_size for p in Path(saved).iterdir() if p.is_file())
    weights = (Path(saved) / "model.safetensors").stat().st_size
    version = tracker.log_model_dir(saved, "quantized_model", registered_name=registered_name)
    return {
        "folder": str(saved),
        "reload_max_abs_logit_diff": diff,
        "folder_mb": disk / 1e6,
        "safetensors_mb": weights / 1e6,
        "registered_version": version,
    }


@task(name="quantize-speed", cache_policy=NO_CACHE)
def speed(fp_model, qmodel, prompt: torch.Tensor, decode_tokens: int, matvec_repeats: int, bandwidth_mib: int) -> dict:
    """Matvec latency per quantized layer shape (all methods, cache-cold), decode tokens/s, memory GB/s."""
    shapes, working_sets = matvec_by_shape(fp_model, qmodel, repeats=matvec_repeats, working_set_mib=bandwidth_mib)
    result = {"matvec": shapes, "matvec_working_sets": working_sets, "memory_gb_per_s": memory_bandwidth(bandwidth_mib)}
    if decode_tokens > 0:
        result["decode_tokens_per_s"] = decode_speed(fp_model, qmodel, prompt, decode_tokens)
    return result
