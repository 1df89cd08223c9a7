"""Bit packing of quantization codes into int32 words, and of boolean maps into bytes.

Layout (the kernels in `fused_cpu.py` read exactly this): code j of a run of codes lives in word
j // (32 // bits), at bits [(j % per_word) * bits, ... + bits) counted from the least significant
bit. 2-bit codes: 16 per int32; 4-bit codes: 8 per int32. A run whose length is not a whole number
of words is zero-padded up to the next word, and the padding is counted in the bit accounting.
"""

from __future__ import annotations

import torch

SUPPORTED_BITS = (1, 2, 4, 8)  # codes must tile a 32-bit word exactly


def codes_per_word(bits: int) -> int:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")
    return 32 // bits


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes [..., n] in [0, 2**bits) -> int32 words [..., ceil(n / (32 // bits))]."""
    per = codes_per_word(bits)
    n = codes.shape[-1]
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= (1 << bits)):
        raise ValueError(f"codes out of range for {bits} bits: [{int(codes.min())}, {int(codes.max())}]")
    pad = (-n) % per
    c = codes.to(torch.int64)
    if pad:
        c = torch.nn.functional.pad(c, (0, pad))
    c = c.reshape(*codes.shape[:-1], -1, per)
    shifts = torch.arange(per, dtype=torch.int64) * bits
    words = (c << shifts).sum(-1)  # < 2**32, exact in int64
    words = torch.where(words >= 2**31, words - 2**32, words)  # two's complement into int32
    return words.to(torch.int32)


def unpack_codes(words: torch.Tensor, bits: int, n: int | None = None) -> torch.Tensor:
    """int32 words [..., w] -> uint8 codes [..., n] (n defaults to every code the words hold)."""
    per = codes_per_word(bits)
    shifts = torch.arange(per, dtype=torch.int32) * bits
    # An arithmetic shift keeps the low bits intact, so the mask recovers the code exactly.
    codes = ((words.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)).to(torch.uint8).flatten(-2)
    return codes if n is None else codes[..., :n]


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """bool [..., n] -> uint8 [..., ceil(n / 8)], bit i of byte j is element 8 j + i."""
    n = mask.shape[-1]
    m = mask.to(torch.uint8)
    pad = (-n) % 8
    if pad:
        m = torch.nn.functional.pad(m, (0, pad))
    m = m.reshape(*mask.shape[:-1], -1, 8).to(torch.int32)
    return (m << torch.arange(8, dtype=torch.int32)).sum(-1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    bits = (packed.to(torch.int32).unsqueeze(-1) >> torch.arange(8, dtype=torch.int32)) & 1
    return bits.flatten(-2)[..., :n].to(torch.bool)
