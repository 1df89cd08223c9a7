"""One quantization method over a whole model, measured: the quantize flow's per-method step.

`quantize_and_evaluate` quantizes a copy of the model with a QuantSpec (the head at its own bits when
the spec says so) and measures held-out perplexity and exact bits/weight; `plan_for_budget` turns a
whole-model bits/weight budget into the spec that spends it (budget.py).
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable
from typing import Optional

import torch
from torch import nn

from components.quant.budget import apply_head_bits, head_linear, plan_budget, whole_model_bits
from components.quant.evaluation import perplexity as perplexity_of
from components.quant.model import dequantized_once, model_bits, quantizable_linears, quantize_model
from components.quant.spec import QuantSpec


def layer_filter(layers: Optional[str]) -> Optional[Callable[[str], bool]]:
    """A predicate on layer names from the `layers` regex (None: every projection)."""
    if not layers:
        return None
    pattern = re.compile(layers)
    return lambda name: bool(pattern.search(name))


def calibration_needs(specs: list[QuantSpec]) -> tuple[bool, bool, bool]:
    """What any of `specs` needs from calibration: (a pass at all, layer Hessians, Fisher diagonals)."""
    flags = list(zip(*(spec.calibration_needs() for spec in specs)))
    return tuple(any(flag) for flag in flags) if flags else (False, False, False)


def plan_for_budget(
    model: nn.Module,
    spec: QuantSpec,
    budget: float,
    calibration: Optional[dict],
    include_lm_head: bool,
    layers: Optional[str],
) -> QuantSpec:
    """`spec` re-planned to spend `budget` bits/weight over ALL weights, the head included."""
    if not spec.quantizes:
        raise ValueError(f"quant.budget={budget} needs a quantizing method, but quant_method={spec.name!r} keeps fp32")
    linears = quantizable_linears(model, spec, include_lm_head, layer_filter(layers))
    stats = calibration or {}
    head = head_linear(model)
    fisher = {name: stats[name]["fisher"] for name in linears if "fisher" in stats.get(name, {})}
    head_fisher = stats.get(head[0], {}).get("fisher") if head else None
    return plan_budget(model, linears, spec, budget, fisher, head_fisher)


def quantize_and_evaluate(
    model: nn.Module,
    spec: QuantSpec,
    calibration: Optional[dict],
    eval_batches: list[torch.Tensor],
    include_lm_head: bool,
    layers: Optional[str],
    mode: str,
) -> tuple[nn.Module, dict]:
    """Quantize a copy of `model` with `spec` and measure its perplexity; returns (model, table row)."""
    qmodel = copy.deepcopy(model) if spec.quantizes else model
    start = time.perf_counter()
    layouts = quantize_model(
        qmodel, spec, calibration, mode=mode, include_lm_head=include_lm_head, layer_filter=layer_filter(layers)
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
