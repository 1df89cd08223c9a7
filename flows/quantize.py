"""`quantize`: range-aware mixed 2/4-bit weights with aligned packing (arXiv 2311.16442).

load model -> held-out text -> calibrate (when a method needs activations or Hessians) ->
plan the bit budget (`quant.budget`: bits/weight over every weight, the head included) ->
quantize with the chosen method and the baselines side by side -> perplexity table ->
save + reload check + register the quantized model (for `serve`) -> matvec / decode speed ->
table, plots and JSON in MLflow.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Optional

from components.checks import ConfigError, in_range, one_of
from components.quant.linear import MODES
from mlsys.flow import FlowConfig, system_flow
from mlsys.tracking import Tracker
from tasks.quantize import (
    budget_spec,
    calibration_stats,
    heldout_windows,
    load_model,
    method_spec,
    needs_calibration,
    quantize_and_evaluate,
    save_and_register,
    speed,
)


@dataclass
class QuantMethodConfig:
    """conf/quant_method/*.yaml: instantiated into components.quant.QuantSpec (see its field comments)."""

    _target_: str = "components.quant.QuantSpec"
    name: str = "mixed"
    method: str = "rtn"
    bits_low: int = 2
    bits_high: int = 4
    frac_high: float = 0.25
    group_size: int = 64
    tile_rows: int = 16
    score: str = "range"
    bit_budget: float = 0.0
    scale_format: str = "u8"
    zero_format: str = "u8"
    gptq_damp: float = 0.01
    gptq_block: int = 128
    seed: int = 0
    head_bits: Optional[int] = None  # tied embedding / LM head: None fp32, 2 or 4 (quant.budget chooses it)

    def __post_init__(self) -> None:
        one_of("quant_method.head_bits", self.head_bits, (None, 2, 4))


@dataclass
class QuantBudgetConfig:
    # bits/weight over EVERY weight (packed layers + the head at its bits + 32 x norms); the default is the
    # least bits within 10% of the 4-bit model's perplexity on the frontier (benchmarks/quant_frontier.py).
    # None: quant_method's own share (frac_high / bit_budget over the packed layers, head_bits as set).
    budget: Optional[float] = None

    def __post_init__(self) -> None:
        if self.budget is not None:
            in_range("quant.budget", self.budget, 2.0, 8.0)  # 2-bit codes alone need 2; above 8 nothing is mixed


@dataclass
class QuantEvalConfig:
    context: int = 256  # tokens per perplexity window (non-overlapping windows, stated in every table)
    windows: int = 16  # evaluation windows: 16 x 256 = ~4k predicted tokens of held-out docs
    calibration_windows: int = 8  # calibration windows (a disjoint set of doc topics)
    text_seed: int = 0  # which doc topics are held out


@dataclass
class QuantSpeedConfig:
    matvec_repeats: int = 7  # medians over this many alternating passes
    decode_tokens: int = 32  # greedy tokens for end-to-end tokens/s (0: skip)
    bandwidth_mib: int = 512  # array summed to measure memory bandwidth (above the caches)


@dataclass
class QuantizeConfig(FlowConfig):
    source: str = "smollm2"  # smollm2 | a model folder | a registered MLflow model name (lm-draft)
    quant_method: QuantMethodConfig = field(default_factory=QuantMethodConfig)
    baselines: list[str] = field(
        default_factory=lambda: ["fp32", "rtn4", "rtn2"]
    )  # other quant_method options, side by side
    include_lm_head: bool = False  # the (tied) output head stays dense: its embedding twin needs fp32 rows anyway
    layers: Optional[str] = None  # regex on layer names to quantize only some (tiny demos); None: every projection
    forward_mode: str = (
        "auto"  # QuantLinear path: auto (fused for decode, dequant+GEMM for prefill) | naive | pipelined | fused
    )
    eval: QuantEvalConfig = field(default_factory=QuantEvalConfig)
    speed: QuantSpeedConfig = field(default_factory=QuantSpeedConfig)
    registered_name: Optional[str] = None  # None: smollm2-135m-<method name> or <source>-<method name>
    quant: QuantBudgetConfig = field(default_factory=QuantBudgetConfig)

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


def registered_name_for(cfg: QuantizeConfig) -> str:
    if cfg.registered_name:
        return cfg.registered_name
    stem = (
        "smollm2-135m"
        if cfg.source == "smollm2"
        else re.sub(r"[^A-Za-z0-9_-]+", "-", cfg.source.rstrip("/").split("/")[-1])
    )
    return f"{stem}-{cfg.quant_method.name}"


@system_flow(
    name="quantize",
    config=QuantizeConfig,
    order=20,
    summary_metric="bits_per_weight",
)
def quantize(cfg: QuantizeConfig, tracker: Tracker) -> dict[str, float]:
    """Quantize a causal LM to mixed 2/4 bits, compare with baselines, save and register it."""
    from hydra.utils import instantiate

    main_spec = instantiate(cfg.quant_method)
    baselines = [method_spec(name) for name in cfg.baselines if name != main_spec.name]
    model, base = load_model(cfg.source, cfg.tracking.uri)
    text = heldout_windows(
        base.get("tokenizer_dir"), cfg.eval.context, cfg.eval.windows, cfg.eval.calibration_windows, cfg.eval.text_seed
    )
    tracker.set_tags(
        {
            "model_source": base["source"],
            "heldout_text": text["source"],
            "note": "SmolLM2's packaged weights are Q4_1: its 'fp32' is the dequantized 4-bit model",
        }
    )
    flags = zip(*map(needs_calibration, baselines + [main_spec]))
    need_pass, need_hessian, need_fisher = (any(flag) for flag in flags)
    budget = cfg.quant.budget
    calib = (
        calibration_stats(
            model, text["calibration"], need_hessian, need_fisher, cfg.include_lm_head or budget is not None
        )
        if need_pass
        else None
    )
    if budget is not None:
        main_spec = budget_spec(model, main_spec, budget, calib, cfg.include_lm_head, cfg.layers)
    specs = baselines + [main_spec]

    rows, main_model = [], None
    for step, spec in enumerate(specs):
        qmodel, row = quantize_and_evaluate(
            model, spec, calib, text["eval"], cfg.include_lm_head, cfg.layers, cfg.forward_mode
        )
        rows.append(row)
        tracker.log_metrics({"perplexity": row["perplexity"], "bits_per_weight": row["bits_per_weight"]}, step=step)
        if spec is main_spec:
            main_model = qmodel
        elif qmodel is not model:
            del qmodel
    table = {r["method"]: r for r in rows}
    summary = _summary(table, main_spec.name)

    name = registered_name_for(cfg)
    saved = save_and_register(
        main_model,
        main_spec,
        base,
        str(cfg.work_path("quantize", name)),
        tracker,
        name,
        text["eval"][0],
        {"perplexity_table": rows, "context": cfg.eval.context},
    )
    timing = speed(
        model,
        main_model,
        text["eval"][0][:, :16],
        cfg.speed.decode_tokens,
        cfg.speed.matvec_repeats,
        cfg.speed.bandwidth_mib,
    )
    summary.update({k: v for k, v in saved.items() if isinstance(v, float)})
    summary.update(_speed_summary(timing))
    _log_results(tracker, rows, timing, cfg, main_spec.name)
    tracker.set_tags(
        {
            "registered_model": name,
            "registered_version": saved["registered_version"],
            "quantized_folder": saved["folder"],
        }
    )
    return summary


def _summary(table: dict, main: str) -> dict[str, float]:
    out = {
        "bits_per_weight": table[main]["bits_per_weight"],
        "perplexity": table[main]["perplexity"],
        "bits_per_weight_all": table[main]["bits_per_weight_all"],
    }
    if "fp32" in table and "rtn2" in table:
        lost = table["rtn2"]["perplexity"] - table["fp32"]["perplexity"]
        if lost > 0:
            out["ppl_recovery_vs_rtn2"] = (table["rtn2"]["perplexity"] - table[main]["perplexity"]) / lost
            # the same on log-perplexity: a collapsed 2-bit baseline cannot inflate it
            out["log_ppl_recovery_vs_rtn2"] = (table["rtn2"]["nll"] - table[main]["nll"]) / (
                table["rtn2"]["nll"] - table["fp32"]["nll"]
            )
    return out


def _speed_summary(timing: dict) -> dict[str, float]:
    out = {"memory_gb_per_s": timing["memory_gb_per_s"]}
    if timing["matvec"]:  # no QuantLinear when the chosen method is fp32
        largest = max(timing["matvec"], key=lambda k: math.prod(int(d) for d in k.split("x")))
        per = timing["matvec"][largest]
        for method in ("naive", "pipelined", "fused"):
            if method in per:
                out[f"matvec_speedup_{method}_largest"] = per["fp32"]["seconds"] / per[method]["seconds"]
    for label, tps in timing.get("decode_tokens_per_s", {}).items():
        out[f"decode_tokens_per_s_{label}"] = tps
    return out


def _log_results(tracker: Tracker, rows: list[dict], timing: dict, cfg: QuantizeConfig, main: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tracker.log_dict({"perplexity": rows, "speed": timing, "context": cfg.eval.context}, "tables/quantize.json")
    lines = [
        f"Perplexity on held-out CPython docs, context {cfg.eval.context} tokens, {rows[0]['tokens']} tokens.",
        "SmolLM2's packaged weights are Q4_1, so its 'fp32' row is the dequantized 4-bit model.",
        "",
        "bits/weight: over the packed layers; all weights: the head at its bits and 32 x the rest included.",
        "",
        "| method | bits/weight | all weights | head bits | perplexity | model MB |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['method']}{' (saved)' if r['method'] == main else ''} | {r['bits_per_weight']:.3f} | "
        f"{r['bits_per_weight_all']:.3f} | {r['head_bits'] or 32} | {r['perplexity']:.3f} | {r['model_mb']:.1f} |"
        for r in rows
    ]
    tracker.log_text("\n".join(lines) + "\n", "tables/quantize.md")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    quantized = [r for r in rows if r["bits_per_weight"] < 32]
    ax1.scatter([r["bits_per_weight"] for r in quantized], [r["perplexity"] for r in quantized])
    for r in quantized:
        ax1.annotate(r["method"], (r["bits_per_weight"], r["perplexity"]))
    fp = [r["perplexity"] for r in rows if r["bits_per_weight"] >= 32]
    if fp:
        ax1.axhline(fp[0], ls="--", c="gray", label="fp32 (dequantized Q4_1)")
        ax1.legend()
    ax1.set(xlabel="bits / weight", ylabel=f"perplexity (context {cfg.eval.context})", title="accuracy vs size")
    shapes = list(timing["matvec"])
    methods = [m for m in ("fp32", "naive", "pipelined", "fused") if shapes and m in timing["matvec"][shapes[0]]]
    for i, m in enumerate(methods):
        ax2.bar(
            [j + i * 0.2 for j in range(len(shapes))],
            [timing["matvec"][s][m]["seconds"] * 1e6 for s in shapes],
            width=0.2,
            label=m,
        )
    ax2.set_xticks([j + 0.3 for j in range(len(shapes))], shapes)
    ax2.set(ylabel="µs per matvec (median)", title="one-token matvec per layer shape")
    ax2.legend()
    fig.tight_layout()
    tracker.log_figure(fig, "plots/quantize.png")
    plt.close(fig)
