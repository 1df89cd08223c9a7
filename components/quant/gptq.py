"""GPTQ-style error compensation (Frantar et al. 2022) for the mixed 2/4-bit groups.

Columns are quantized left to right; each column's rounding error is spread over the columns not
yet quantized through the inverse Hessian H = E[x x^T] of the layer's inputs, so later weights
absorb earlier errors. Group parameters are fitted when the sweep reaches the group (on the
already-updated weights), at that group's precision (2 or 4 bits, chosen beforehand by the range
rule). Hessians come from one calibration pass of the unquantized model (not layer-sequential).
"""

from __future__ import annotations

import torch

from components.quant.quantizer import encode_mins, encode_scales, minmax_params
from components.quant.spec import QuantSpec


def _inverse_hessian_chol(H: torch.Tensor, damp: float) -> torch.Tensor:
    H = H.double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    H += damp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
    L = torch.linalg.cholesky(H)
    return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True).float()


def gptq_quantize(W: torch.Tensor, bits: torch.Tensor, spec: QuantSpec, hessian: torch.Tensor):
    """Codes [out, G, g], stored scale tensors, zero [out, G] (integer or fp16-rounded)."""
    out_f, in_f = W.shape
    g, G = spec.group_size, in_f // spec.group_size
    W = W.clone().float()
    Hinv = _inverse_hessian_chol(hessian, spec.gptq_damp)
    # The second-order scale base of each row comes from the original weights' min/max scales.
    init_scale, _ = minmax_params(W.reshape(out_f, G, g), bits)
    store, _ = encode_scales(init_scale, spec.scale_format)
    if spec.zero_format == "u8":  # the minima's per-row (lowest, step) also come from the original weights
        store.update(encode_mins(W.reshape(out_f, G, g).amin(-1))[0])
    scale_used = torch.zeros(out_f, G)
    zero = torch.zeros(out_f, G)
    codes = torch.zeros(out_f, G, g, dtype=torch.uint8)
    qmax_all = (2**bits - 1).float()
    for b0 in range(0, in_f, spec.gptq_block):
        b1 = min(b0 + spec.gptq_block, in_f)
        W1 = W[:, b0:b1].clone()
        err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = b0 + i
            gi = col // g
            if col % g == 0:
                s, z = _fit_group(W1[:, i : i + g], bits[:, gi], spec, store, gi)
                scale_used[:, gi], zero[:, gi] = s, z
            s, z, qmax = scale_used[:, gi], zero[:, gi], qmax_all[:, gi]
            w = W1[:, i]
            q = torch.minimum(torch.clamp(torch.round(w / s + z), min=0), qmax)
            codes[:, gi, col % g] = q.to(torch.uint8)
            err = (w - (q - z) * s) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            err1[:, i] = err
        W[:, b1:] -= err1 @ Hinv[b0:b1, b1:]
    final = _store_u8(scale_used, store) if spec.scale_format == "u8" else {"scales": scale_used.to(torch.float16)}
    if spec.zero_format == "u8":
        final.update(encode_mins(-zero * scale_used, store["zero_base"])[0])
    return codes, final, zero


def _fit_group(block: torch.Tensor, bits: torch.Tensor, spec: QuantSpec, store: dict, gi: int):
    """(scale, zero) of one group column for all rows, as they will be stored."""
    scale, _ = minmax_params(block, bits)
    if spec.scale_format == "u8":
        base = store["scale_base"].float().clamp(min=1e-8)
        code = torch.clamp(torch.ceil(scale / base * 256) - 1, 0, 255)
        scale = (code + 1) * base / 256
    else:
        scale = scale.to(torch.float16).float()
    group_min = block.amin(-1)
    if spec.zero_format == "u8":
        return scale, -encode_mins(group_min.unsqueeze(1), store["zero_base"])[1].squeeze(1) / scale
    zero = -group_min / scale
    qmax = (2**bits - 1).float()
    if spec.zero_format == "int":
        zero = torch.minimum(torch.clamp(torch.round(zero), min=0), qmax)
    else:
        zero = zero.to(torch.float16).float()
    return scale, zero


def _store_u8(scale_used: torch.Tensor, store: dict) -> dict:
    base = store["scale_base"].float().clamp(min=1e-8)
    codes = torch.clamp(torch.round(scale_used / base[:, None] * 256) - 1, 0, 255).to(torch.uint8)
    return {"scale_codes": codes, "scale_base": store["scale_base"]}
