"""Prefect tasks of the `quantize` flow: load, calibrate, plan, compare methods, save + register, speed, report.

Each task is one coarse step over a whole model; models pass between them in process
(cache_policy=NO_CACHE: hashing a model's tensors for a cache key would cost more than the step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from tokenizers import Tokenizer
from torch import nn

from components.quant import QuantSpec
from components.quant import report as quant_report
from components.quant.compare import calibration_needs, plan_for_budget, quantize_and_evaluate
from components.quant.config import BudgetSettings, EvalSettings, SpeedSettings
from components.quant.evaluation import encode, python_docs_split, windows
from components.quant.model import (
    calibrate,
    load_base_model,
    load_quantized,
    logits_of,
    save_quantized,
    set_mode,
    target_linears,
)
from components.quant.speed import decode_speed, matvec_by_shape, memory_bandwidth
from mlsys.tracking import Tracker, load_registered_model_dir


@task(name="quantize-load-model", cache_policy=NO_CACHE, retries=1)
def load_model(source: str, tracking_uri: Optional[str]) -> tuple[nn.Module, dict]:
    """'smollm2', a model folder, or an MLflow registered model name (e.g. lm-draft)."""
    if source != "smollm2" and not Path(source).exists():
        get_run_logger().info("model source %r is not a folder: fetching the registered model", source)
        folder = load_registered_model_dir(source, tracking_uri)
        model, base = load_base_model(str(folder))
        base["source"] = f"registered:{source}"
        return model, base
    return load_base_model(source)


@task(name="quantize-heldout-text", cache_policy=NO_CACHE)
def heldout_windows(tokenizer_dir: Optional[str], settings: EvalSettings) -> dict:
    """Evaluation and calibration windows from disjoint, seeded sets of CPython doc topics."""
    if tokenizer_dir is None:
        raise FileNotFoundError("no tokenizer.json beside the model nor in the SmolLM2 cache")
    tokenizer = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    calib_text, eval_text = python_docs_split(settings.text_seed)
    return {
        "eval": windows(encode(tokenizer, eval_text), settings.context, settings.windows),
        "calibration": windows(encode(tokenizer, calib_text), settings.context, max(1, settings.calibration_windows)),
        "source": "pydoc_data.topics (CPython docs), seeded topic split",
        "context": settings.context,
    }


@task(name="quantize-calibrate", cache_policy=NO_CACHE)
def calibration_stats(model: nn.Module, batches: list, specs: list[QuantSpec], include_lm_head: bool) -> Optional[dict]:
    """Activation statistics, Hessians and Fisher diagonals as far as `specs` need them (None: none do)."""
    need_pass, hessian, fisher = calibration_needs(specs)
    if not need_pass:
        return None
    return calibrate(model, batches, list(target_linears(model, include_lm_head)), hessian=hessian, fisher=fisher)


@task(name="quantize-plan-budget", cache_policy=NO_CACHE)
def budget_spec(
    model: nn.Module, spec: QuantSpec, settings: BudgetSettings, calibration: Optional[dict], heads: bool, layers
) -> QuantSpec:
    """`spec` re-planned to spend settings.budget bits/weight over ALL weights, the head included
    (budget.py); `heads`: the LM head is quantized with the layers."""
    planned = plan_for_budget(model, spec, settings.budget, calibration, heads, layers)
    get_run_logger().info(
        "budget %.3f bits/weight: head at %s bits, %s",
        settings.budget,
        planned.head_bits,
        f"layers at {planned.bit_budget:.3f}" if planned.bit_budget else f"share {planned.frac_high:.3f}",
    )
    return planned


@task(name="quantize-methods", cache_policy=NO_CACHE)
def compare_methods(
    model: nn.Module,
    specs: list[QuantSpec],
    calibration: Optional[dict],
    eval_batches: list,
    include_lm_head: bool,
    layers: Optional[str],
    mode: str,
    tracker: Tracker,
) -> tuple[list[dict], nn.Module]:
    """Every spec side by side on the same held-out windows; returns the table rows and the last
    spec's (the chosen method's) quantized model."""
    rows, chosen = [], model
    for step, spec in enumerate(specs):
        chosen, row = quantize_and_evaluate(model, spec, calibration, eval_batches, include_lm_head, layers, mode)
        rows.append(row)
        tracker.log_metrics({"perplexity": row["perplexity"], "bits_per_weight": row["bits_per_weight"]}, step=step)
        get_run_logger().info(
            "%s: %.3f bits/weight, perplexity %.3f", spec.name, row["bits_per_weight"], row["perplexity"]
        )
    return rows, chosen


@task(name="quantize-save-register", cache_policy=NO_CACHE, retries=1)
def save_and_register(
    qmodel: nn.Module,
    spec: QuantSpec,
    base: dict,
    folder: str,
    tracker: Tracker,
    registered_name: Optional[str],
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
def speed(fp_model: nn.Module, qmodel: nn.Module, prompt: torch.Tensor, settings: SpeedSettings) -> dict:
    """Matvec latency per quantized layer shape (all methods, cache-cold), decode tokens/s, memory GB/s."""
    shapes, working_sets = matvec_by_shape(
        fp_model, qmodel, repeats=settings.matvec_repeats, working_set_mib=settings.bandwidth_mib
    )
    result = {
        "matvec": shapes,
        "matvec_working_sets": working_sets,
        "memory_gb_per_s": memory_bandwidth(settings.bandwidth_mib),
    }
    if settings.decode_tokens > 0:
        result["decode_tokens_per_s"] = decode_speed(fp_model, qmodel, prompt, settings.decode_tokens)
    return result


@task(name="quantize-report", cache_policy=NO_CACHE)
def report_results(
    tracker: Tracker, rows: list[dict], timing: dict, saved: dict, main: str, context: int, registered_name: str
) -> dict[str, float]:
    """Table, plot and JSON to MLflow; returns the run's summary figures."""
    tracker.log_dict({"perplexity": rows, "speed": timing, "context": context}, "tables/quantize.json")
    tracker.log_text(quant_report.markdown_table(rows, main, context), "tables/quantize.md")
    tracker.log_figure(quant_report.figure(rows, timing, context), "plots/quantize.png")
    tracker.set_tags(
        {
            "registered_model": registered_name,
            "registered_version": saved["registered_version"],
            "quantized_folder": saved["folder"],
        }
    )
    return {
        **quant_report.summary(rows, main),
        **{k: v for k, v in saved.items() if isinstance(v, float)},
        **quant_report.speed_summary(timing),
    }
