"""`PackedMatrix`: a weight in the integer kernel's layout, from a QuantLinear or from GGUF blocks.

One matrix W_hat [out, in] with W_hat = s * q + m per group of `group_size` weights along in, tiles of
`tile_rows` output rows, low-bit and high-bit code streams of equal length per tile and a per-tile
bit map (absent when a layer has one precision), exactly as `quantizer.py` packs a layer. Metadata
is read by the kernel in its stored form: u8 scale codes with a per-row base, or fp16 scales; u8
minimum codes with a per-row (offset, step), or fp16 minimums.

Built three ways, every one without a float copy of the weight:
- `from_quant_linear(layer)`: shares the layer's packed buffers (the mixed 2/4-bit model);
- `from_gguf_q4_1(blocks, shape)`: GGUF Q4_1 (per 32 weights: fp16 d, fp16 m, 16 bytes of nibbles,
  w = d * q + m), the nibbles moved into the project's packing, d and m kept as the fp16 they are;
- `from_gguf_q8_0(blocks, shape)`: GGUF Q8_0 (fp16 d, 32 int8 q, w = d * q) as unsigned codes
  q + 128 with minimum -128 d (a power-of-two multiple of d, exact in fp16 and float32).
`quantize_asymmetric(weight, bits)` makes one from a float weight (RTN, fp16 scale and minimum).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from components.quant import int_kernel
from components.quant.packing import pack_codes, unpack_bits, unpack_codes

SCALE_U8, SCALE_F16 = 0, 1  # the kernel's metadata kinds


class PackedMatrix:
    """A low-bit matrix the integer kernel multiplies: `matmul(x [N, in]) -> [N, out]`."""

    def __init__(
        self,
        out_features: int,
        in_features: int,
        group_size: int,
        tile_rows: int,
        bits_low: int,
        bits_high: int,
        codes_lo: torch.Tensor,
        codes_hi: torch.Tensor,
        group_map: torch.Tensor | None,
        all_high: bool,
        scale_kind: int,
        scale_codes: torch.Tensor,
        scale_base: torch.Tensor | None,
        min_kind: int,
        min_codes: torch.Tensor,
        min_base: torch.Tensor | None,
    ):
        if in_features % group_size or group_size % 32:
            raise ValueError(
                f"PackedMatrix needs groups of a multiple of 32 codes dividing in_features, got "
                f"group_size={group_size}, in_features={in_features}"
            )
        if out_features % tile_rows:
            raise ValueError(f"out_features={out_features} is not a multiple of tile_rows={tile_rows}")
        self.out_features, self.in_features = out_features, in_features
        self.group_size, self.tile_rows = group_size, tile_rows
        self.bits_low, self.bits_high = bits_low, bits_high
        self.codes_lo, self.codes_hi = codes_lo.contiguous(), codes_hi.contiguous()
        self.group_map = group_map.contiguous() if group_map is not None else torch.empty(0, dtype=torch.uint8)
        self.all_high = bool(all_high)
        self.scale_kind, self.min_kind = scale_kind, min_kind
        self.scale_codes, self.min_codes = scale_codes.contiguous(), min_codes.contiguous()
        self.act_levels = 1  # 1: int8 activations; 2: plus an int8 residual level (about 15-bit activations)
        # How the kernel reads a mixed 2/4-bit matrix. "split" (see `split_streams`): every group as 2-bit
        # codes, four rows per step with no block lists, then the high groups' low bits; "streams": the
        # stored layout, a 2-bit and a 4-bit stream with two block lists per row, kept as a choice (the
        # benchmark measures both). On short rows (1536x576: 18 groups a row), where a row's lists cost
        # about as much as its blocks, split is the faster; on long rows (576x1536) the two are level.
        self.kernel_layout = "split" if (bits_low, bits_high) == (2, 4) and group_map is not None else "streams"
        self._split: tuple[torch.Tensor, torch.Tensor] | None = None
        empty = torch.empty(0)
        self.scale_base = scale_base.float().contiguous() if scale_base is not None else empty
        self.min_base = min_base.float().contiguous() if min_base is not None else empty

    # --- construction ----------------------------------------------------------------------------
    @classmethod
    def supports(cls, layout) -> bool:
        """Whether a QuantLinear layout can go through the integer kernel (else: the float kernel)."""
        return (
            layout.group_size % 32 == 0
            and layout.zero_format == "u8"
            and layout.scale_format in ("u8", "fp16")
            and layout.bits_low in (2, 4, 8)
            and layout.bits_high in (2, 4, 8)
        )

    @classmethod
    def from_quant_linear(cls, layer) -> PackedMatrix:
        lay = layer.layout
        if not cls.supports(lay):
            raise ValueError(
                f"layout not supported by the integer kernel: group {lay.group_size}, scales "
                f"{lay.scale_format}, zeros {lay.zero_format}"
            )
        if lay.scale_format == "u8":
            scale_kind, scale_codes, scale_base = SCALE_U8, layer.scale_codes, layer.scale_base.float() / 256
        else:
            scale_kind, scale_codes, scale_base = SCALE_F16, layer.scales.view(torch.int16), None
        return cls(
            lay.out_features,
            lay.in_features,
            lay.group_size,
            lay.tile_rows,
            lay.bits_low,
            lay.bits_high,
            layer.codes_lo,
            layer.codes_hi,
            layer.group_map if lay.has_map else None,
            lay.high_per_tile > 0,
            scale_kind,
            scale_codes,
            scale_base,
            SCALE_U8,
            layer.zero_codes,
            layer.zero_base,
        )

    @classmethod
    def uniform(
        cls, codes: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor, bits: int, tile_rows: int = 16
    ) -> PackedMatrix:
        """Integer codes [out, in], fp16 scale and minimum [out, G] -> one precision, no map."""
        out_f, in_f = codes.shape
        G = scale.shape[1]
        tile_rows = math.gcd(out_f, tile_rows)
        words = pack_codes(codes.reshape(out_f // tile_rows, tile_rows * in_f), bits)
        return cls(
            out_f,
            in_f,
            in_f // G,
            tile_rows,
            bits,
            bits,
            torch.empty(out_f // tile_rows, 0, dtype=torch.int32),
            words,
            None,
            True,
            SCALE_F16,
            scale.to(torch.float16).view(torch.int16),
            None,
            SCALE_F16,
            minimum.to(torch.float16).view(torch.int16),
            None,
        )

    @classmethod
    def from_gguf_q4_1(cls, blocks: np.ndarray, out_features: int, in_features: int) -> PackedMatrix:
        """GGUF Q4_1 bytes [out, in / 32 * 20] (per block: d, m fp16, then 16 bytes of two nibbles)."""
        b = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(out_features, in_features // 32, 20)
        d = torch.from_numpy(b[..., 0:2].copy().view(np.float16)[..., 0])
        m = torch.from_numpy(b[..., 2:4].copy().view(np.float16)[..., 0])
        qs = torch.from_numpy(b[..., 4:].copy()).to(torch.int32)  # byte j: code j (low nibble), code j + 16 (high)
        codes = torch.cat([qs & 15, qs >> 4], -1).reshape(out_features, in_features)
        return cls.uniform(codes, d, m, 4)

    @classmethod
    def from_gguf_q8_0(cls, blocks: np.ndarray, out_features: int, in_features: int) -> PackedMatrix:
        """GGUF Q8_0 bytes [out, in / 32 * 34] (per block: d fp16, 32 int8): codes q + 128, minimum -128 d."""
        b = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(out_features, in_features // 32, 34)
        d = torch.from_numpy(b[..., 0:2].copy().view(np.float16)[..., 0])
        q = torch.from_numpy(b[..., 2:].copy().view(np.int8)).to(torch.int32) + 128
        return cls.uniform(q.reshape(out_features, in_features), d, d * -128, 8)

    @classmethod
    def quantize_asymmetric(cls, weight: torch.Tensor, bits: int, group_size: int = 32) -> PackedMatrix:
        """Round-to-nearest asymmetric groups (fp16 scale and minimum, as Q4_1) of a float weight."""
        out_f, in_f = weight.shape
        if in_f % group_size or group_size % 32:
            raise ValueError(
                f"PackedMatrix needs groups of a multiple of 32 codes dividing in_features, got "
                f"group_size={group_size}, in_features={in_f}"
            )
        groups = weight.float().reshape(out_f, in_f // group_size, group_size)
        lo = groups.amin(-1).to(torch.float16)
        # the floor is fp16's smallest normal: a smaller one rounds to 0 in fp16 (a constant group, e.g. a
        # padding row of zeros, would then divide by zero); its codes are 0 and it dequantizes to its minimum
        scale = ((groups.amax(-1) - lo.float()) / (2**bits - 1)).clamp(min=2.0**-14).to(torch.float16)
        q = torch.round((groups - lo.float()[..., None]) / scale.float()[..., None]).clamp(0, 2**bits - 1)
        return cls.uniform(q.to(torch.int32).reshape(out_f, in_f), scale, lo, bits)

    # --- reading ---------------------------------------------------------------------------------
    @property
    def groups_per_row(self) -> int:
        return self.in_features // self.group_size

    def row_codes(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Codes [rows, in] (uint8) of a one-precision matrix, all rows by default."""
        per_row_words = self.in_features * self.bits_high // 32
        words = self.codes_hi.reshape(self.out_features, per_row_words)
        if rows is not None:
            words = words[rows]
        return unpack_codes(words, self.bits_high, self.in_features)

    def scales_and_mins(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Float scale and minimum [out, G], as the kernel computes them."""
        if self.scale_kind == SCALE_U8:
            scale = (self.scale_codes.float() + 1) * self.scale_base[:, None]
        else:
            scale = self.scale_codes.view(torch.float16).float()
        if self.min_kind == SCALE_U8:
            minimum = self.min_base[:, 0:1] + self.min_codes.float() * self.min_base[:, 1:2]
        else:
            minimum = self.min_codes.view(torch.float16).float()
        return scale, minimum

    def codes(self) -> torch.Tensor:
        """Integer codes [out, G, g] (uint8) in natural order."""
        T, R, G, g = self.out_features // self.tile_rows, self.tile_rows, self.groups_per_row, self.group_size
        n_g = R * G
        if self.group_map.numel():
            high = unpack_bits(self.group_map, n_g)
        else:
            high = torch.full((T, n_g), self.all_high, dtype=torch.bool)
        order = torch.sort(high.to(torch.int8), dim=1, stable=True).indices
        n_hi = int(high[0].sum())
        pos_lo, pos_hi = order[:, : n_g - n_hi], order[:, n_g - n_hi :]
        out = torch.empty(T, n_g, g, dtype=torch.uint8)
        if n_g - n_hi:
            lo = unpack_codes(self.codes_lo, self.bits_low, (n_g - n_hi) * g).reshape(T, -1, g)
            out.scatter_(1, pos_lo.unsqueeze(-1).expand(-1, -1, g), lo)
        if n_hi:
            hi = unpack_codes(self.codes_hi, self.bits_high, n_hi * g).reshape(T, -1, g)
            out.scatter_(1, pos_hi.unsqueeze(-1).expand(-1, -1, g), hi)
        return out.reshape(self.out_features, G, g)

    def dequantize(self) -> torch.Tensor:
        """W_hat [out, in] in float32: the reference the kernel is tested against."""
        scale, minimum = self.scales_and_mins()
        w = self.codes().float() * scale[..., None] + minimum[..., None]
        return w.reshape(self.out_features, self.in_features)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Dequantized rows [len(ids), in] of a one-precision matrix (the tied embedding's lookup)."""
        scale, minimum = self.scale_codes, self.min_codes
        s = scale.view(torch.float16)[ids].float() if self.scale_kind == SCALE_F16 else None
        m = minimum.view(torch.float16)[ids].float() if self.min_kind == SCALE_F16 else None
        if s is None or m is None:
            return self.dequantize()[ids]
        q = self.row_codes(ids).float().reshape(len(ids), self.groups_per_row, self.group_size)
        return (q * s[..., None] + m[..., None]).reshape(len(ids), self.in_features)

    def nbytes(self) -> int:
        """Bytes the kernel reads per product: codes, map, metadata (per-row bases included)."""
        tensors = (
            self.codes_lo,
            self.codes_hi,
            self.group_map,
            self.scale_codes,
            self.min_codes,
            self.scale_base,
            self.min_base,
        )
        return sum(t.numel() * t.element_size() for t in tensors)

    def bits_per_weight(self) -> float:
        return self.nbytes() * 8 / (self.out_features * self.in_features)

    # --- the product -----------------------------------------------------------------------------
    def matmul(self, x: torch.Tensor, path: str | None = None, act_levels: int | None = None) -> torch.Tensor:
        """x [N, in] float32 -> x @ W_hat.T [N, out] with int8 activations (see int_kernel's error bound).

        act_levels (default: the matrix's `act_levels`): 2 adds the int8 rounding residual, a second
        dot product per block that shrinks the activation error 254x.
        """
        int_matmul, best = int_kernel.matmul_function()
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"x must be [N, {self.in_features}], got {tuple(x.shape)}")
        if x.dtype != torch.float32 or not x.is_contiguous():
            x = x.contiguous().float()
        *arguments, levels = self.kernel_arguments()
        return int_matmul(x, *arguments, path or best, act_levels or levels)

    def split_streams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A mixed 2/4-bit matrix as two 2-bit streams (built once, same bytes as the stored ones).

        A 4-bit code is q = 4 h + l with h, l 2-bit, so x . q = 4 (x . h) + x . l. Per tile, the dense
        stream holds every group in row-major order as 2-bit codes (a low group's codes, a high
        group's h) and the correction stream the high groups' l, in the same order; the map is the
        stored one. The dense stream is read like a uniform 2-bit matrix (four rows per step, no block
        lists), and each high group adds one 2-bit block. Tiles keep equal work, as in the paper's
        layout: each has the same number of high groups. The streams are a copy: the matrix then holds
        its codes twice (the stored ones stay, for `codes()` and the streams layout).
        """
        if (self.bits_low, self.bits_high) != (2, 4) or not self.group_map.numel():
            raise ValueError(
                f"the split layout is for mixed 2/4-bit matrices, this one is {self.bits_low}/{self.bits_high}"
                + ("" if self.group_map.numel() else " without a map")
            )
        if self._split is None:
            T, n_g = self.out_features // self.tile_rows, self.tile_rows * self.groups_per_row
            high = unpack_bits(self.group_map, n_g)
            codes = self.codes().reshape(T, n_g, self.group_size)
            dense = torch.where(high[..., None], codes >> 2, codes)
            low = (codes & 3)[high].reshape(T, -1)  # row-major within each tile, tiles in order
            self._split = pack_codes(dense.reshape(T, -1), 2), pack_codes(low, 2)
        return self._split

    def kernel_arguments(self) -> tuple:
        """The kernel's description of this matrix (`int_matmul` after x, before the path; `LeanPlan.add_matrix`)."""
        if self.kernel_layout not in ("split", "streams"):
            raise ValueError(f"kernel_layout must be 'split' or 'streams', got {self.kernel_layout!r}")
        split = self.kernel_layout == "split"
        codes_lo, codes_hi = self.split_streams() if split else (self.codes_lo, self.codes_hi)
        return (
            codes_lo,
            codes_hi,
            self.group_map,
            int(self.all_high),
            int(split),
            self.tile_rows,
            self.group_size,
            self.bits_low,
            2 if split else self.bits_high,
            self.scale_kind,
            self.scale_codes,
            self.scale_base,
            self.min_kind,
            self.min_codes,
            self.min_base,
            self.act_levels,
        )

    def __repr__(self) -> str:
        return (
            f"PackedMatrix({self.out_features}x{self.in_features}, bits {self.bits_low}/{self.bits_high}, "
            f"group {self.group_size}, {self.bits_per_weight():.3f} bits/weight read)"
        )


def product_chain(matrices: Sequence[PackedMatrix], path: str | None = None):
    """A compiled caller of several products of one input: chain.forward(x) -> [x @ W_i.T].

    One call and one OpenMP region for all of them (int_kernel's ProductChain), as a graph runtime
    runs several nodes or the whole-model forward its layers; the matrices must share the input
    width, group size and act_levels.
    """
    chain = int_kernel.module().ProductChain(path or int_kernel.best_path())
    for matrix in matrices:
        chain.add_matrix(*matrix.kernel_arguments())
    return chain
