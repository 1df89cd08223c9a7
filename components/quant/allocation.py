"""Sensitivity-aware choice of the 4-bit groups across the whole model, under an exact bit budget.

The paper's later version picks the 4-bit groups "by Hessian and range variation". Here the
Hessian is the diagonal of the empirical Fisher of the model's own next-token loss, F = E[g**2]
over calibration windows (g = dL/dW), the usual diagonal Hessian approximation of the END-TO-END
loss. Unlike the layer-local H = E[x x^T] (which only sees one layer's output error), it knows that
an error in a value projection costs far more loss than the same error in an MLP projection.

Second-order estimate of what giving a group bits_high instead of bits_low saves:

    gain(group) = sum_j F_j * (err_low(w_j)**2 - err_high(w_j)**2)

where err_b is the round-to-nearest error of the group at b bits (the group's range enters through
the quantization step, so this is the paper's "range" weighted by sensitivity).

Allocation: each layer keeps the alignment rule (every tile of `tile_rows` rows holds the same
number k of 4-bit groups, the top-gain groups of that tile), but k differs per layer. Raising a
layer's k by one adds the (k+1)-th best group of every tile: gain = sum over tiles, cost = the exact
change of the layer's stored bits (codes, padding, precision map). A greedy pass over those steps,
best gain per bit first, stops at the budget on the model's exact bits/weight. Per-tile gains are
sorted, so a layer's gain is concave in k and the greedy choice is the usual knapsack heuristic.
"""

from __future__ import annotations

import dataclasses
import heapq
import math

import torch

from components.quant.quantizer import LayerLayout, bits_breakdown
from components.quant.spec import QuantSpec


def rtn_squared_error(groups: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-weight squared error of min/max round-to-nearest with a real-valued minimum, groups [..., g]."""
    lo, hi = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    step = ((hi - lo) / (2**bits - 1)).clamp(min=1e-8)
    q = torch.clamp(torch.round((groups - lo) / step), 0, 2**bits - 1)
    return (lo + step * q - groups) ** 2


def fisher_gains(weight: torch.Tensor, fisher: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """[out, G]: estimated loss saved by storing each group at bits_high instead of bits_low."""
    out_f, in_f = weight.shape
    groups = weight.detach().float().reshape(out_f, in_f // spec.group_size, spec.group_size)
    f = fisher.float().reshape(groups.shape)
    saved = rtn_squared_error(groups, spec.bits_low) - rtn_squared_error(groups, spec.bits_high)
    return (f * saved).sum(-1)


def layout_bits(layout: LayerLayout, high_per_tile: int) -> int:
    return sum(bits_breakdown(dataclasses.replace(layout, high_per_tile=high_per_tile)).values())


def allocate_high_groups(
    layers: dict[str, tuple[LayerLayout, torch.Tensor]], budget_bits_per_weight: float
) -> dict[str, int]:
    """4-bit groups per tile for every layer: {name: k}, with total bits <= budget x total weights.

    `layers` maps a name to (its layout, its group gains [out, G]). Layers start all at bits_low; if
    even that exceeds the budget, every k stays 0 (the caller sees the bit count and reports it).
    """
    per_tile_gain = {}
    for name, (layout, gains) in layers.items():
        tiles = gains.reshape(layout.n_tiles, layout.groups_per_tile)
        # column k = the sum over tiles of the (k+1)-th best gain in each tile
        per_tile_gain[name] = tiles.sort(dim=1, descending=True).values.sum(0).tolist()
    k = {name: 0 for name in layers}
    bits = {name: layout_bits(layout, 0) for name, (layout, _) in layers.items()}
    budget = budget_bits_per_weight * sum(lay.in_features * lay.out_features for lay, _ in layers.values())
    used = sum(bits.values())
    heap: list[tuple[float, str, int]] = []

    def push(name: str) -> None:
        layout = layers[name][0]
        if k[name] >= layout.groups_per_tile:
            return
        cost = layout_bits(layout, k[name] + 1) - bits[name]
        # the last step of a layer can cost nothing (its precision map goes away): take it first
        ratio = per_tile_gain[name][k[name]] / cost if cost > 0 else math.inf
        heapq.heappush(heap, (-ratio, name, cost))

    for name in layers:
        push(name)
    while heap:
        _, name, cost = heapq.heappop(heap)
        if used + cost > budget:
            continue  # this step does not fit; a cheaper step of another layer still may
        used += cost
        k[name] += 1
        bits[name] += cost
        push(name)
    return k
