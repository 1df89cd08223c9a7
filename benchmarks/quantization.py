"""Mixed 2/4-bit quantization side by side: bits/weight, perplexity, size, matvec latency, tokens/s.

    python -m benchmarks.quantization --quick     # SmolLM2 + draft, 4 windows, RTN rows only (a few minutes)
    python -m benchmarks.quantization --full      # 16 windows, + HQQ 2-bit

Models: SmolLM2-135M-Instruct (its "fp32" weights are the dequantized packaged Q4_1 GGUF, so the
fp32 row is itself a 4-bit model) and the project's trained draft (data/lm_train/draft or the
registered `lm-draft`) when present. Methods are the conf/quant_method options (one definition
for the flow and the benchmark). Perplexity: non-overlapping windows of held-out CPython docs
(pydoc_data.topics, seeded topic split), context stated in the JSON; calibration (Fisher diagonal,
Hessians, activations) uses the first windows of the disjoint calibration topics, and the per-layer-
type sensitivity uses the LAST windows of those topics, never the evaluation text. Matvec latency:
batch-1 y = W x for every distinct layer shape, cycling through up to 8 real layers of that shape
per pass (decode-like: weights not cache-hot), methods alternating within each repeat, medians.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import save_model
from tokenizers import Tokenizer

from benchmarks import quant_kernel
from benchmarks.common import RESULTS_DIR, bandwidth_bars, parse_mode, target, write_result
from components.lm import smollm2
from components.quant import QuantLinear, QuantSpec, fused_cpu
from components.quant.evaluation import encode, python_docs_split, windows
from components.quant.evaluation import perplexity as perplexity_of
from components.quant.model import (
    calibrate,
    dequantized_once,
    load_base_model,
    model_bits,
    quantize_model,
    save_quantized,
    target_linears,
)
from components.quant.spec import method_spec
from components.quant.speed import decode_speed, matvec_by_shape, memory_bandwidth
from mlsys.environment import PROJECT_ROOT
from mlsys.tracking import default_tracking_uri, load_registered_model_dir

QUICK_METHODS = ["fp32", "rtn4", "rtn2", "mixed", "mixed_range", "mixed_random"]
FULL_METHODS = QUICK_METHODS + ["hqq2"]
# gptq2 / gptq_mixed (conf/quant_method) are left out: their per-column sweep and the Hessian pass
# cost more than the rest together on the shared 2-core machine, and on held-out calibration text
# they were worse than RTN (see docs/flows/quantize.md). Add them here to measure them.
CALIBRATION_WINDOWS = 8  # as the flow's eval.calibration_windows
BANDWIDTH_MIB = 512  # bandwidth probe and fp32 matvec working set: past any L3 it ran on (32-260 MB)
SENSITIVITY_WINDOWS = 2  # held-out calibration windows for the per-layer-type 2-bit sensitivity
# (the recovery target's pairs: each mixed scheme against the uniform 2-bit one of the same method and group)
RECOVERY_PAIRS = {
    "mixed": "rtn2",
    "mixed_range": "rtn2",
    "mixed_random": "rtn2",
    "mixed_act": "rtn2",
    "gptq_mixed": "gptq2",
}


def methods(full: bool) -> list[QuantSpec]:
    return [method_spec(name) for name in (FULL_METHODS if full else QUICK_METHODS)]


def hqq_available() -> bool:
    try:
        import hqq.core.quantize  # noqa: F401, PLC0415  (optional dependency: probing whether it is installed)

        return True
    except Exception:
        return False


def find_draft() -> tuple[str, dict] | None:
    """(folder, provenance) of the trained draft: data/lm_train/draft, else the registered lm-draft."""
    folder = PROJECT_ROOT / "data" / "lm_train" / "draft"
    info: dict = {}
    try:
        versions = MlflowClient(default_tracking_uri()).search_model_versions("name='lm-draft'")
        if versions:
            newest = max(versions, key=lambda v: int(v.version))
            info["registered_lm_draft_newest"] = {
                "version": str(newest.version),
                "run_id": newest.run_id,
                "source": newest.source,
            }
    except Exception as exc:  # the store may be absent on a fresh checkout
        info["registered_lm_draft_newest"] = f"not readable: {exc.__class__.__name__}"
    if (folder / "config.json").exists():
        weights = folder / "model.safetensors"
        info.update(
            {
                "path": str(folder.relative_to(PROJECT_ROOT)),
                "weights_sha256_first_16mb": hashlib.sha256(weights.open("rb").read(16 << 20)).hexdigest()[:16],
                "weights_mtime_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(weights.stat().st_mtime)),
            }
        )
        return str(folder), info
    try:
        info["path"] = "registered:lm-draft"
        return str(load_registered_model_dir("lm-draft")), info
    except Exception:
        return None


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 1e6


def recovery(rows: dict, mixed: str, uniform: str) -> dict[str, float]:
    """Share of the fp32 -> uniform 2-bit loss that the mixed scheme wins back, on ppl and on log-ppl."""
    fp, lo, mx = (rows[m]["perplexity"] for m in ("fp32", uniform, mixed))
    if lo <= fp:
        return {"ppl": float("nan"), "log_ppl": float("nan")}
    # log-ppl (mean NLL): a collapsed 2-bit baseline cannot inflate it the way it inflates ppl
    return {"ppl": (lo - mx) / (lo - fp), "log_ppl": (math.log(lo) - math.log(mx)) / (math.log(lo) - math.log(fp))}


def layer_type(name: str) -> str:
    return name.rsplit(".", 1)[-1]


@torch.no_grad()
def type_sensitivity(model, spec: QuantSpec, batches: list[torch.Tensor]) -> dict[str, float]:
    """Mean NLL when ONLY the layers of one type (q_proj, down_proj, ...) are quantized with `spec`."""
    out = {"none": perplexity_of(model, batches)["nll"]}
    for kind in sorted({layer_type(n) for n in target_linears(model)}):
        qmodel = copy.deepcopy(model)
        quantize_model(qmodel, spec, mode="naive", layer_filter=lambda n, kind=kind: layer_type(n) == kind)
        with dequantized_once(qmodel):
            out[kind] = perplexity_of(qmodel, batches)["nll"]
    return out


def allocation_summary(qmodel) -> dict[str, dict]:
    """Share of 4-bit groups and bits/weight per layer type (what the model-wide allocation chose)."""
    acc: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # 4-bit groups, groups, bits, weights
    for name, m in qmodel.named_modules():
        if isinstance(m, QuantLinear):
            lay, a = m.layout, acc[layer_type(name)]
            a[0] += lay.high_per_tile * lay.n_tiles
            a[1] += lay.groups_per_tile * lay.n_tiles
            a[2] += sum(m.bits().values())
            a[3] += m.in_features * m.out_features
    return {kind: {"high_group_share": h / g, "bits_per_weight": b / w} for kind, (h, g, b, w) in acc.items()}


@torch.no_grad()
def bench_model(
    source: str,
    label: str,
    full: bool,
    context: int,
    n_windows: int,
    decode_tokens: int,
    matvec_repeats: int,
    bandwidth_gbs: float,
) -> dict:
    model, base = load_base_model(source)
    tok_dir = base.get("tokenizer_dir") or str(smollm2.cache_dir())
    tokenizer = Tokenizer.from_file(str(Path(tok_dir) / "tokenizer.json"))
    calib_text, eval_text = python_docs_split(0)
    block = getattr(getattr(model, "config", None), "block_size", None)
    ctx = min(context, block) if block else context
    eval_batches = windows(encode(tokenizer, eval_text), ctx, n_windows)
    calib_all = windows(encode(tokenizer, calib_text), ctx, 10**6)
    calib_batches, heldout_calib = calib_all[:CALIBRATION_WINDOWS], calib_all[-SENSITIVITY_WINDOWS:]
    specs = [s for s in methods(full) if s.method != "hqq" or hqq_available()]
    need = [s.calibration_needs() for s in specs]
    calib, calib_s = None, 0.0
    if any(n[0] for n in need):
        start = time.perf_counter()
        calib = calibrate(
            model,
            calib_batches,
            list(target_linears(model)),
            hessian=any(n[1] for n in need),
            fisher=any(n[2] for n in need),
        )
        calib_s = time.perf_counter() - start
    rows, mixed_model = {}, None
    tmp = Path(tempfile.mkdtemp(prefix="quant-bench-"))
    for spec in specs:
        start = time.perf_counter()
        qmodel = copy.deepcopy(model)
        quantize_model(qmodel, spec, calib, mode="naive")
        quant_s = time.perf_counter() - start
        with dequantized_once(qmodel):
            ppl = perplexity_of(qmodel, eval_batches)
        bits = model_bits(qmodel)
        saved = save_quantized(qmodel, tmp / spec.name, spec, base) if spec.quantizes else None
        rows[spec.name] = {
            "group_size": spec.group_size if spec.quantizes else None,
            "score": spec.score if spec.quantizes else None,
            "bit_budget": spec.bit_budget or None,
            "bits_per_weight": bits["bits_per_weight"] if spec.quantizes else 32.0,
            "perplexity": ppl["perplexity"],
            "nll": ppl["nll"],
            "eval_tokens": ppl["tokens"],
            "quantize_seconds": quant_s,
            "quantized_layer_mb": bits["quantized_bits"] / 8e6 if spec.quantizes else None,
            "disk_mb": folder_mb(saved) if saved else None,
            **{k: v for k, v in bits.items() if k.startswith("bits_") and k != "bits_per_weight"},
        }
        print(
            f"[{label}] {spec.name}: {rows[spec.name]['bits_per_weight']:.3f} bits/w, ppl {ppl['perplexity']:.3f} "
            f"({quant_s:.0f} s)",
            flush=True,
        )
        if spec.name == "mixed":
            mixed_model = qmodel
        else:
            del qmodel
    fp_layer_mb = sum(m.weight.numel() for m in target_linears(model).values()) * 4 / 1e6
    rows["fp32"]["quantized_layer_mb"] = fp_layer_mb
    # fp32 on disk: the same model saved as plain safetensors
    fp_dir = tmp / "fp32"
    fp_dir.mkdir()
    save_model(model, str(fp_dir / "model.safetensors"))
    rows["fp32"]["disk_mb"] = folder_mb(fp_dir)

    sensitivity = type_sensitivity(model, method_spec("rtn2"), heldout_calib)
    print(
        f"[{label}] 2-bit sensitivity (NLL, held-out calibration text): "
        + ", ".join(f"{k} {v:.2f}" for k, v in sensitivity.items()),
        flush=True,
    )
    matvec, working_sets = matvec_by_shape(model, mixed_model, matvec_repeats, working_set_mib=BANDWIDTH_MIB)
    add_ratios(matvec, working_sets, bandwidth_gbs)
    decode = {}
    if decode_tokens:
        tps = decode_speed(model, mixed_model, eval_batches[0][:, :16], decode_tokens)
        decode = {"fp32": tps["fp32"], "mixed": tps["quantized"]}
    return {
        "source": base["source"],
        "context": ctx,
        "eval_windows": len(eval_batches),
        "eval_tokens": rows["fp32"]["eval_tokens"],
        "calibration_windows": len(calib_batches),
        "calibration_seconds": calib_s,
        "methods": rows,
        "recovery_vs_uniform_2bit": {
            f"{m}_vs_{u}": recovery(rows, m, u) for m, u in RECOVERY_PAIRS.items() if m in rows and u in rows
        },
        "sensitivity_2bit_by_layer_type_nll": {
            "text": f"last {SENSITIVITY_WINDOWS} calibration windows (disjoint from evaluation)",
            "spec": "rtn2",
            **sensitivity,
        },
        "mixed_allocation_by_layer_type": allocation_summary(mixed_model),
        "matvec": matvec,
        "matvec_working_sets": working_sets,
        "decode_tokens_per_s": decode,
        "decode_speedup": decode["mixed"] / decode["fp32"] if decode else None,
    }


def add_ratios(latency: dict, working_sets: dict, bandwidth_gbs: float) -> None:
    """Speedup vs fp32 and the fraction of the memory bandwidth, per shape and method (in place)."""
    for shape, res in latency.items():
        for m in res:
            res[m]["speedup_vs_fp32"] = res["fp32"]["seconds"] / res[m]["seconds"]
            res[m]["fraction_of_memory_bandwidth"] = res[m]["gb_per_s"] / bandwidth_gbs
        print(
            f"  matvec {shape} ({working_sets[shape]['layers']} layers): "
            + ", ".join(f"{m} {v['seconds'] * 1e6:.0f} us" for m, v in res.items()),
            flush=True,
        )


def largest_shapes(matvec: dict) -> list[str]:
    sizes = {s: math.prod(int(v) for v in s.split("x")) for s in matvec}
    top = max(sizes.values())
    return [s for s, n in sizes.items() if n == top]


def plot(results: dict):
    import matplotlib  # noqa: PLC0415  (start-up cost, only when plotting)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  (after matplotlib.use)

    models = list(results["models"])
    fig, axes = plt.subplots(2, max(2, len(models)), figsize=(6 * max(2, len(models)), 9), squeeze=False)
    for i, label in enumerate(models):
        res = results["models"][label]
        ax = axes[0][i]
        for name, row in res["methods"].items():
            if row["bits_per_weight"] < 32:
                ax.scatter(row["bits_per_weight"], row["perplexity"])
                ax.annotate(name, (row["bits_per_weight"], row["perplexity"]))
        ax.axhline(res["methods"]["fp32"]["perplexity"], ls="--", c="gray", label="fp32")
        ax.set_yscale("log")
        ax.set(title=f"{label}: perplexity (context {res['context']})", xlabel="bits / weight (all included)")
        ax.legend()
        ax = axes[1][i]
        bandwidth_bars(
            ax, res["matvec"], results["memory_gb_per_s"], f"{label}: batch-1 matvec, achieved GB/s of weights read"
        )
        ax.legend(fontsize=8)
    fig.suptitle("SmolLM2 'fp32' = dequantized Q4_1 GGUF weights; shared 2-core machine")
    fig.tight_layout()
    return fig


def frontier_targets(results: dict) -> list[dict]:
    """The frontier's targets from its own result file (its perplexity sweep is a separate, longer run)."""
    path = RESULTS_DIR / "quant_frontier.json"
    if not path.exists():
        results["frontier_source"] = f"{path.name} missing: run python -m benchmarks.quant_frontier --full"
        return []
    frontier = json.loads(path.read_text())
    results["frontier_source"] = f"{path.name}, written by: {frontier.get('command', 'benchmarks.quant_frontier')}"
    return [target(t["name"], t["value"], t["goal"], t["op"]) for t in frontier.get("targets", [])]


def main(argv=None) -> None:
    args = parse_mode(__doc__.splitlines()[0], argv)
    full = bool(args.full)
    settings = {
        "context": 256,
        "windows": 16 if full else 4,
        "decode_tokens": 32 if full else 12,
        "matvec_repeats": 9 if full else 5,
        "methods": FULL_METHODS if full else QUICK_METHODS,
        "calibration_windows": CALIBRATION_WINDOWS,
        "sensitivity_windows": SENSITIVITY_WINDOWS,
    }
    bandwidth = memory_bandwidth(BANDWIDTH_MIB)
    results = {
        "settings": settings,
        "memory_gb_per_s": bandwidth,
        "fused_kernel": fused_cpu.available(),
        "fused_kernel_note": fused_cpu.unavailable_reason()
        if not fused_cpu.available()
        else "gcc -O3 -march=native, OpenMP",
        "hqq": "hqq 0.2.8.post1 installed, HQQ fit runs on CPU" if hqq_available() else "hqq not importable",
        "heldout_text": "pydoc_data.topics (CPython docs), seeded topic split, non-overlapping windows",
        "note": (
            "SmolLM2's packaged weights are Q4_1: its fp32 row is the dequantized 4-bit model. "
            "Shared 2-core machine (other engineers' jobs running): timings are medians of "
            "alternating repeats; compare ratios."
        ),
        "models": {},
    }
    sources = [("smollm2", "smollm2", {})]
    draft = find_draft()
    if draft:
        sources.append(("draft", *draft))
    else:
        results["draft_note"] = "no trained draft found (data/lm_train/draft or registered lm-draft): skipped"
    for label, source, provenance in sources:
        results["models"][label] = bench_model(
            source,
            label,
            full,
            settings["context"],
            settings["windows"],
            settings["decode_tokens"],
            settings["matvec_repeats"],
            bandwidth,
        )
        if provenance:
            results["models"][label]["provenance"] = provenance
    targets = []
    for label, res in results["models"].items():
        sfx = "" if label == "smollm2" else f"_{label}"
        rec = res["recovery_vs_uniform_2bit"]["mixed_vs_rtn2"]
        targets.append(target(f"mixed_bits_per_weight{sfx}", res["methods"]["mixed"]["bits_per_weight"], 2.9, "<="))
        targets.append(target(f"mixed_ppl_recovery_vs_rtn2{sfx}", rec["ppl"], 0.5, ">="))
        targets.append(target(f"mixed_log_ppl_recovery_vs_rtn2{sfx}", rec["log_ppl"], 0.5, ">="))
        big = largest_shapes(res["matvec"])
        best = {
            s: max((m for m in res["matvec"][s] if m != "fp32"), key=lambda m: res["matvec"][s][m]["speedup_vs_fp32"])
            for s in big
        }
        speedup = min(res["matvec"][s][best[s]]["speedup_vs_fp32"] for s in big)
        res["largest_layer_shapes"] = big
        res["largest_layer_best_path"] = best
        targets.append(target(f"matvec_speedup_largest_layers{sfx}", speedup, 1.5, ">="))
    if full:  # the integer kernel, ONNX Runtime's MatMulNBits and the native Q4_1 decode (benchmarks/quant_kernel.py)
        results["kernel"], kernel_targets = quant_kernel.run(True)
        targets += kernel_targets
        targets += frontier_targets(results)
    write_result("quantization", results, targets, figure=plot(results), args=args)


if __name__ == "__main__":
    main()
