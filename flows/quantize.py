"""`quantize`: range-aware mixed 2/4-bit weights with aligned packing (arXiv 2311.16442).

load model -> held-out text -> calibrate (when a method needs activations or Hessians) ->
plan the bit budget (`quant.budget`: bits/weight over every weight, the head included) ->
quantize with the chosen method and the baselines side by side -> perplexity table ->
save + reload check + register the quantized model (for `serve`) -> matvec / decode speed ->
table, plots and JSON in MLflow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from components.checks import ConfigError, one_of
from components.quant.config import BudgetSettings, EvalSettings, SpeedSettings
from components.quant.linear import MODES
from components.quant.spec import QuantSpec, method_spec
from mlsys.flow import FlowConfig, system_flow
from mlsys.tracking import Tracker
from tasks.quantize import (
    budget_spec,
    calibration_stats,
    compare_methods,
    heldout_windows,
    load_model,
    report_results,
    save_and_register,
    speed,
)

Q4_NOTE = "SmolLM2's packaged weights are Q4_1: its 'fp32' is the dequantized 4-bit model"


@dataclass
class QuantizeConfig(FlowConfig):
    source: str = "smollm2"  # smollm2 | a model folder | a registered MLflow model name (lm-draft)
    quant_method: QuantSpec = field(default_factory=QuantSpec)  # conf/quant_method/*.yaml: the method saved
    baselines: list[str] = field(default_factory=lambda: ["fp32", "rtn4", "rtn2"])  # quant_method options beside it
    include_lm_head: bool = False  # the (tied) output head stays dense: its embedding twin needs fp32 rows anyway
    layers: Optional[str] = None  # regex on layer names to quantize only some (tiny demos); None: every projection
    # QuantLinear path: auto (fused for decode, dequant+GEMM for prefill) | naive | pipelined | fused
    forward_mode: str = "auto"
    eval: EvalSettings = field(default_factory=EvalSettings)
    speed: SpeedSettings = field(default_factory=SpeedSettings)
    registered_name: Optional[str] = None  # None: smollm2-135m-<method name> or <source>-<method name>
    quant: BudgetSettings = field(default_factory=BudgetSettings)

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of("forward_mode", self.forward_mode, MODES)
        if self.layers:
            try:
                re.compile(self.layers)
            except re.error as exc:
                raise ConfigError("layers", self.layers, f"is not a regular expression: {exc}") from exc
            if self.quant.budget is not None:
                raise ConfigError(
                    "quant.budget",
                    self.quant.budget,
                    "counts every weight of the model, so it cannot "
                    "apply to the few layers `layers` selects: set quant.budget=null",
                )

    def model_name(self) -> str:
        if self.registered_name:
            return self.registered_name
        stem = (
            "smollm2-135m"
            if self.source == "smollm2"
            else re.sub(r"[^A-Za-z0-9_-]+", "-", self.source.rstrip("/").split("/")[-1])
        )
        return f"{stem}-{self.quant_method.name}"

    def baseline_specs(self) -> list[QuantSpec]:
        return [method_spec(name) for name in self.baselines if name != self.quant_method.name]


# The paper's claim this flow's summary metric measures (the suite's table, the run's summary).
CLAIM = "mixed 2/4-bit by group range: ~2.x bits/weight near 4-bit quality"


@system_flow("quantize", QuantizeConfig, order=20, summary_metric="bits_per_weight", claim=CLAIM)
def quantize(cfg: QuantizeConfig, tracker: Tracker) -> dict[str, float]:
    """Quantize a causal LM to mixed 2/4 bits, compare with baselines, save and register it."""
    specs, budget, heads = [*cfg.baseline_specs(), cfg.quant_method], cfg.quant.budget, cfg.include_lm_head
    model, base = load_model(cfg.source, cfg.tracking.uri)
    text = heldout_windows(base.get("tokenizer_dir"), cfg.eval)
    tracker.set_tags({"model_source": base["source"], "heldout_text": text["source"], "note": Q4_NOTE})
    calib = calibration_stats(model, text["calibration"], specs, heads or budget is not None)
    if budget is not None:
        specs[-1] = budget_spec(model, specs[-1], cfg.quant, calib, heads, cfg.layers)
    rows, chosen = compare_methods(model, specs, calib, text["eval"], heads, cfg.layers, cfg.forward_mode, tracker)
    folder = str(cfg.work_path("quantize", cfg.model_name()))
    extra = {"perplexity_table": rows, "context": cfg.eval.context}  # saved beside the weights
    saved = save_and_register(chosen, specs[-1], base, folder, tracker, cfg.model_name(), text["eval"][0], extra)
    timing = speed(model, chosen, text["eval"][0][:, :16], cfg.speed)
    return report_results(tracker, rows, timing, saved, specs[-1].name, cfg.eval.context, cfg.model_name())
