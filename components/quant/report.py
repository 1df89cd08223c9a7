"""The quantize flow's results: summary figures, the markdown table and the plot (accuracy vs size, matvec speed)."""

from __future__ import annotations

import math

from matplotlib.figure import Figure  # a figure without pyplot: no backend, no global state

MATVEC_METHODS = ("fp32", "naive", "pipelined", "fused")


def summary(rows: list[dict], main: str) -> dict[str, float]:
    """The chosen method's bits and perplexity, and how much of rtn2's perplexity loss it recovers."""
    table = {r["method"]: r for r in rows}
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


def speed_summary(timing: dict) -> dict[str, float]:
    """Memory bandwidth, each kernel's speed-up over fp32 on the largest layer shape, decode tokens/s."""
    out = {"memory_gb_per_s": timing["memory_gb_per_s"]}
    if timing["matvec"]:  # no QuantLinear when the chosen method is fp32
        largest = max(timing["matvec"], key=lambda k: math.prod(int(d) for d in k.split("x")))
        per = timing["matvec"][largest]
        for method in MATVEC_METHODS[1:]:
            if method in per:
                out[f"matvec_speedup_{method}_largest"] = per["fp32"]["seconds"] / per[method]["seconds"]
    for label, tps in timing.get("decode_tokens_per_s", {}).items():
        out[f"decode_tokens_per_s_{label}"] = tps
    return out


def markdown_table(rows: list[dict], main: str, context: int) -> str:
    lines = [
        f"Perplexity on held-out CPython docs, context {context} tokens, {rows[0]['tokens']} tokens.",
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
    return "\n".join(lines) + "\n"


def figure(rows: list[dict], timing: dict, context: int):
    """Perplexity against bits/weight beside one-token matvec time per layer shape."""
    fig = Figure(figsize=(11, 4))
    ax1, ax2 = fig.subplots(1, 2)
    _accuracy_vs_size(ax1, rows, context)
    _matvec_times(ax2, timing["matvec"])
    fig.tight_layout()
    return fig


def _accuracy_vs_size(ax, rows: list[dict], context: int) -> None:
    quantized = [r for r in rows if r["bits_per_weight"] < 32]
    ax.scatter([r["bits_per_weight"] for r in quantized], [r["perplexity"] for r in quantized])
    for r in quantized:
        ax.annotate(r["method"], (r["bits_per_weight"], r["perplexity"]))
    fp = [r["perplexity"] for r in rows if r["bits_per_weight"] >= 32]
    if fp:
        ax.axhline(fp[0], ls="--", c="gray", label="fp32 (dequantized Q4_1)")
        ax.legend()
    ax.set(xlabel="bits / weight", ylabel=f"perplexity (context {context})", title="accuracy vs size")


def _matvec_times(ax, matvec: dict) -> None:
    shapes = list(matvec)
    methods = [m for m in MATVEC_METHODS if shapes and m in matvec[shapes[0]]]
    for i, m in enumerate(methods):
        ax.bar(
            [j + i * 0.2 for j in range(len(shapes))],
            [matvec[s][m]["seconds"] * 1e6 for s in shapes],
            width=0.2,
            label=m,
        )
    ax.set_xticks([j + 0.3 for j in range(len(shapes))], shapes)
    ax.set(ylabel="µs per matvec (median)", title="one-token matvec per layer shape")
    ax.legend()
