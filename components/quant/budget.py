"""A whole-model bit budget: every weight counted, the tied embedding / LM head included.

Accounting (what "bits/weight" means here and in the frontier benchmark):

    bits/weight = (stored bits of every quantized linear layer + stored bits of the head
                   + 32 x every other parameter) / every parameter of the model

The head is the tied 49152 x 576 embedding / LM head of SmolLM2 (a fifth of its weights). With
`QuantSpec.head_bits=None` it stays fp32 and costs 32 bits per weight; with 2 or 4 it is stored as
asymmetric groups of the spec's group size in the spec's scale / zero formats (all groups at one
precision: a uniform layer, no precision map), counted exactly like any packed layer. Norm
weights and biases stay fp32 and are counted at 32 bits.

For perplexity the head is applied as its dequantized values (the tied tensor is overwritten in
place, so the embedding lookup and the output projection both see the quantized weights): the
same numbers a packed head would produce, computed in fp32.

`plan_budget` turns a budget into a spec for the three mixed schemes:
- fisher (`score=fisher`): the head's precision and the 4-bit groups of every layer are chosen
  together; the layers' share is the budget minus the head and the fp32 parameters, allocated by
  `allocation.allocate_high_groups`. The head at 4 bits is one indivisible item whose estimated gain
  (Fisher-weighted error drop, as for any group) is compared with what its bits buy elsewhere.
- range / random / range_act (the paper's v1 rule and its ablations): the same share of 4-bit groups
  in every layer (`frac_high`), the largest share whose exact total fits the budget; the head gets 4
  bits whenever the budget holds it with every layer at 2 bits, else 2.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from components.quant.allocation import allocate_high_groups, fisher_gains, layout_bits
from components.quant.linear import QuantLinear, reference_dequantize
from components.quant.quantizer import LayerLayout, PackedWeight, bits_breakdown, layout_for, quantize_weight
from components.quant.spec import QuantSpec

HEAD_BITS = (2, 4)
DEFAULT_TOLERANCE = 0.10  # the default budget keeps perplexity within 10% of the 4-bit model's


def head_linear(model: nn.Module) -> tuple[str, nn.Module] | None:
    """(name, module) of the model's output head (the last module named *lm_head), or None."""
    found = [(name, m) for name, m in model.named_modules() if name.endswith("lm_head")]
    return found[-1] if found else None


def head_spec(spec: QuantSpec, head_bits: int) -> QuantSpec:
    """The uniform spec the head is quantized with: the spec's method, group size and formats."""
    if head_bits not in HEAD_BITS:
        raise ValueError(f"head_bits={head_bits!r} is not one of {HEAD_BITS} (None keeps the head fp32)")
    return dataclasses.replace(
        spec,
        name=f"{spec.name}-head",
        bits_low=2,
        bits_high=4,
        score="range",
        frac_high=1.0 if head_bits == 4 else 0.0,
        bit_budget=0.0,
        head_bits=None,
    )


def head_layout(model: nn.Module, spec: QuantSpec, head_bits: int) -> LayerLayout:
    _, head = head_linear(model)
    return layout_for(tuple(head.weight.shape), head_spec(spec, head_bits))


@torch.no_grad()
def apply_head_bits(model: nn.Module, spec: QuantSpec, stats: dict | None = None) -> PackedWeight | None:
    """Quantize the head to spec.head_bits and write its dequantized values into the (tied) weight.

    Returns the packed head (for the bit count), or None when head_bits is None or the head is
    already a QuantLinear (a packed fast path took it). `stats` are the head's calibration
    statistics (GPTQ's Hessian); RTN and HQQ need none.
    """
    if spec.head_bits is None or not spec.quantizes:
        return None
    found = head_linear(model)
    if found is None:
        raise ValueError("head_bits is set but the model has no module named lm_head")
    _, head = found
    if isinstance(head, QuantLinear):
        return None
    hspec = head_spec(spec, spec.head_bits)
    if hspec.method == "gptq" and (stats or {}).get("hessian") is None:
        hspec = dataclasses.replace(hspec, method="rtn")  # no head Hessian: round to nearest
    packed = quantize_weight(head.weight, hspec, hessian=(stats or {}).get("hessian"))
    head.weight.data.copy_(reference_dequantize(packed.layout, packed.tensors))
    return packed


def whole_model_bits(model: nn.Module, head: PackedWeight | LayerLayout | None = None) -> dict[str, float]:
    """Bits over ALL parameters: packed layers + the head (when `head` is given) + 32 x the rest."""
    head_weight = None
    if head is not None:
        head_weight = head_linear(model)[1].weight
    head_layout_ = head.layout if isinstance(head, PackedWeight) else head
    packed_bits = packed_weights = dense = 0
    for module in model.modules():
        if isinstance(module, QuantLinear):
            packed_bits += sum(module.bits().values())
            packed_weights += module.in_features * module.out_features
    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, QuantLinear):
            continue
        for p in module.parameters(recurse=False):
            if id(p) not in seen and p is not head_weight:
                seen.add(id(p))
                dense += p.numel()
    head_bits_total = sum(bits_breakdown(head_layout_).values()) if head_layout_ is not None else 0
    head_weights = head_weight.numel() if head_weight is not None else 0
    weights = packed_weights + head_weights + dense
    total = packed_bits + head_bits_total + 32 * dense
    return {
        "bits_per_weight_all": total / weights,
        "total_bits": total,
        "total_weights": weights,
        "head_bits_total": head_bits_total,
        "head_weights": head_weights,
        "dense_fp32_weights": dense,
        "packed_bits": packed_bits,
        "packed_weights": packed_weights,
    }


# --- planning a budget (no quantization: exact bit counts from the layouts) -----------------------


def _fixed_bits(model: nn.Module, layers: dict[str, nn.Linear], spec: QuantSpec, head_bits: int | None):
    """(bits outside the planned layers, total weights): the head at head_bits + 32 x the rest."""
    found = head_linear(model)
    head_w = found[1].weight if found is not None else None
    planned = {id(linear.weight) for linear in layers.values()}
    seen: set[int] = set()
    dense = 0
    for p in model.parameters():
        if id(p) in seen or id(p) in planned or (head_bits is not None and p is head_w):
            continue
        seen.add(id(p))
        dense += p.numel()
    head = sum(bits_breakdown(head_layout(model, spec, head_bits)).values()) if head_bits is not None else 0
    weights = dense + sum(lin.weight.numel() for lin in layers.values()) + (head_w.numel() if head_bits else 0)
    return head + 32 * dense, weights


def share_bits(layouts: dict[str, LayerLayout], frac_high: float, spec: QuantSpec) -> int:
    """Exact stored bits of the layers with the same share `frac_high` of 4-bit groups in each."""
    return sum(layout_bits(lay, int(round(frac_high * lay.groups_per_tile))) for lay in layouts.values())


def budget_range(model: nn.Module, layers: dict[str, nn.Linear], spec: QuantSpec) -> tuple[float, float]:
    """(least, most) whole-model bits/weight a mixed spec can reach: all 2-bit + head 2, all 4-bit + head 4."""
    layouts = {n: layout_for(tuple(lin.weight.shape), spec, lin.bias is not None) for n, lin in layers.items()}
    out = []
    for frac, head_bits in ((0.0, 2), (1.0, 4)):
        fixed, weights = _fixed_bits(model, layers, spec, head_bits)
        out.append((share_bits(layouts, frac, spec) + fixed) / weights)
    return out[0], out[1]


def plan_budget(
    model: nn.Module,
    layers: dict[str, nn.Linear],
    spec: QuantSpec,
    budget: float,
    fisher: dict[str, torch.Tensor] | None = None,
    head_fisher: torch.Tensor | None = None,
) -> QuantSpec:
    """The spec that spends `budget` bits/weight over the whole model (see the module docstring).

    `layers` are the linears `quantize_model` will pack (`model.quantizable_linears`); `fisher` their
    Fisher diagonals and `head_fisher` the head's (score=fisher only).
    """
    least, most = budget_range(model, layers, spec)
    if not least <= budget:
        raise ValueError(
            f"budget={budget} bits/weight is below the least this model can store with {spec.name!r}: "
            f"{least:.4f} (every group and the head at 2 bits)"
        )
    layouts = {n: layout_for(tuple(lin.weight.shape), spec, lin.bias is not None) for n, lin in layers.items()}
    if budget >= most:
        return dataclasses.replace(spec, frac_high=1.0, bit_budget=0.0, score=_share_score(spec), head_bits=4)
    if spec.score == "fisher":
        return _plan_fisher(model, layers, layouts, spec, budget, fisher, head_fisher)
    fixed4, weights = _fixed_bits(model, layers, spec, 4)
    head_bits = 4 if share_bits(layouts, 0.0, spec) + fixed4 <= budget * weights else 2
    fixed, weights = _fixed_bits(model, layers, spec, head_bits)
    allowed = budget * weights - fixed
    lo, hi = 0.0, 1.0  # the largest share that fits: bits are non-decreasing in the share
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if share_bits(layouts, mid, spec) <= allowed else (lo, mid)
    return dataclasses.replace(spec, frac_high=lo, bit_budget=0.0, head_bits=head_bits)


def _share_score(spec: QuantSpec) -> str:
    return "range" if spec.score == "fisher" else spec.score


def _plan_fisher(model, layers, layouts, spec, budget, fisher, head_fisher) -> QuantSpec:
    if fisher is None or head_fisher is None or any(name not in fisher for name in layers):
        raise ValueError(
            "a budget for score='fisher' needs the Fisher diagonal of every layer and of the head "
            "(calibrate with fisher=True, the head included)"
        )
    linear_weights = sum(lin.weight.numel() for lin in layers.values())
    gains = {name: fisher_gains(lin.weight, fisher[name], spec) for name, lin in layers.items()}
    _, head = head_linear(model)
    head_gain = float(fisher_gains(head.weight, head_fisher, spec).sum())
    best = None
    for head_bits in HEAD_BITS:
        fixed, weights = _fixed_bits(model, layers, spec, head_bits)
        linear_budget = (budget * weights - fixed) / linear_weights
        if linear_budget * linear_weights < share_bits(layouts, 0.0, spec):
            continue  # the head at these bits does not fit even with every layer at 2 bits
        k = allocate_high_groups({n: (layouts[n], gains[n]) for n in layers}, linear_budget)
        gain = sum(_top_gain(layouts[n], gains[n], k[n]) for n in layers) + (head_gain if head_bits == 4 else 0.0)
        if best is None or gain > best[0]:
            best = (gain, head_bits, linear_budget)
    _, head_bits, linear_budget = best
    return dataclasses.replace(spec, bit_budget=linear_budget, head_bits=head_bits)


def _top_gain(layout: LayerLayout, gains: torch.Tensor, k: int) -> float:
    tiles = gains.reshape(layout.n_tiles, layout.groups_per_tile)
    return float(tiles.sort(dim=1, descending=True).values[:, :k].sum())


# --- the default budget from a frontier ----------------------------------------------------------


def default_budget(frontier: list[dict], reference_perplexity: float, tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """The least-bits point of `frontier` whose perplexity is within (1 + tolerance) x the reference.

    `frontier`: rows with 'bits_per_weight' and 'perplexity' (one scheme, several budgets). Raises
    when no point qualifies, so a caller never serves a model that misses the rule silently.
    """
    if not reference_perplexity > 0 or not math.isfinite(reference_perplexity):
        raise ValueError(f"reference perplexity must be a positive number, got {reference_perplexity!r}")
    limit = (1 + tolerance) * reference_perplexity
    ok = [row for row in frontier if math.isfinite(row["perplexity"]) and row["perplexity"] <= limit]
    if not ok:
        best = min((row["perplexity"] for row in frontier), default=float("nan"))
        raise ValueError(
            f"no frontier point is within {tolerance:.0%} of the reference perplexity "
            f"{reference_perplexity:.3f} (limit {limit:.3f}; best {best:.3f})"
        )
    return min(ok, key=lambda row: (row["bits_per_weight"], row["perplexity"]))
