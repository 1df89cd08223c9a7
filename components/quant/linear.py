"""`QuantLinear`: a packed mixed 2/4-bit linear layer with three forward paths.

- naive: dequantize the whole weight, then one matmul (what "quantized is slower than fp16" users see);
- pipelined: dequantize tile chunk i+1 on a worker thread while chunk i multiplies: the CPU analogue
  of the paper's asynchronous dequantization (torch kernels release the GIL, so the two overlap);
- fused: a C++ kernel (`fused_cpu.py`) that reads the packed codes and accumulates
  s * sum(q * x) + b * sum(x) group by group, never writing a dequantized weight to memory.

All three compute x @ W_hat.T + bias for the same W_hat = s * (q - z); tests hold them to the
reference within float tolerance.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from components.quant import fused_cpu
from components.quant.packed_matrix import PackedMatrix
from components.quant.packing import unpack_bits, unpack_codes
from components.quant.quantizer import (
    LayerLayout,
    PackedWeight,
    bits_breakdown,
    decode_u8_mins,
    decode_u8_scales,
    tile_order,
)

MODES = ("auto", "naive", "pipelined", "fused", "int8")
FUSED_MAX_ROWS = 8  # the fused kernel re-decodes codes per input row: above this a dequantize + GEMM wins


def unpack_layer(layout: LayerLayout, tensors: dict[str, torch.Tensor]):
    """Packed tensors -> (codes [out, G, g] uint8, scale [out, G], zero [out, G], high [out, G] bool)."""
    T, n_g, g, G = layout.n_tiles, layout.groups_per_tile, layout.group_size, layout.groups_per_row
    if layout.has_map:
        high = unpack_bits(tensors["group_map"], n_g).reshape(layout.out_features, G)
    else:
        high = torch.full((layout.out_features, G), layout.high_per_tile > 0, dtype=torch.bool)
    pos_lo, pos_hi = tile_order(high, layout)
    codes = torch.empty(T, n_g, g, dtype=torch.uint8)
    lo = unpack_codes(tensors["codes_lo"], layout.bits_low, layout.low_per_tile * g).reshape(T, -1, g)
    hi = unpack_codes(tensors["codes_hi"], layout.bits_high, layout.high_per_tile * g).reshape(T, -1, g)
    codes.scatter_(1, pos_lo.unsqueeze(-1).expand(-1, -1, g), lo)
    codes.scatter_(1, pos_hi.unsqueeze(-1).expand(-1, -1, g), hi)
    if layout.scale_format == "u8":
        scale = decode_u8_scales(tensors["scale_codes"], tensors["scale_base"])
    else:
        scale = tensors["scales"].float()
    if layout.zero_format == "u8":
        zero = -decode_u8_mins(tensors["zero_codes"], tensors["zero_base"]) / scale
    elif layout.zero_format == "int":
        zero = torch.empty(T, n_g)
        zero.scatter_(1, pos_lo, unpack_codes(tensors["zeros_lo"], layout.bits_low, layout.low_per_tile).float())
        zero.scatter_(1, pos_hi, unpack_codes(tensors["zeros_hi"], layout.bits_high, layout.high_per_tile).float())
        zero = zero.reshape(layout.out_features, G)
    else:
        zero = tensors["zeros"].float()
    return codes.reshape(layout.out_features, G, g), scale, zero, high


def reference_dequantize(layout: LayerLayout, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """W_hat = s * (q - z), written the plain way: the reference the fast paths are tested against."""
    codes, scale, zero, _ = unpack_layer(layout, tensors)
    w = (codes.float() - zero.unsqueeze(-1)) * scale.unsqueeze(-1)
    return w.reshape(layout.out_features, layout.in_features)


class QuantLinear(nn.Module):
    """Drop-in for nn.Linear holding packed codes; `mode` picks the forward path (see module doc)."""

    def __init__(self, layout: LayerLayout, mode: str = "auto", pipeline_chunks: int = 4):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"QuantLinear mode must be one of {MODES}, got {mode!r}")
        self.layout = layout
        self.in_features, self.out_features = layout.in_features, layout.out_features
        self.mode = mode
        self.pipeline_chunks = pipeline_chunks  # chunks of tiles in flight: 2+ to overlap, few to keep matmuls large
        for name, (shape, dtype) in layout.buffer_shapes().items():
            self.register_buffer(name, torch.zeros(shape, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(layout.out_features), requires_grad=False) if layout.has_bias else None
        self.register_load_state_dict_post_hook(_after_load)
        self.dense_cache: torch.Tensor | None = None  # set by model.dequantized_once() for many-window evaluation
        self.prepare()

    @classmethod
    def from_packed(cls, packed: PackedWeight, mode: str = "auto", pipeline_chunks: int = 4) -> QuantLinear:
        layer = cls(packed.layout, mode, pipeline_chunks)
        for name, tensor in packed.tensors.items():
            getattr(layer, name).copy_(tensor)
        if packed.bias is not None:
            layer.bias.data.copy_(packed.bias.float())
        layer.prepare()
        return layer

    def packed_tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.layout.buffer_shapes()}

    def bits(self) -> dict[str, int]:
        return bits_breakdown(self.layout)

    def bits_per_weight(self) -> float:
        return sum(self.bits().values()) / (self.in_features * self.out_features)

    @torch.no_grad()
    def prepare(self) -> None:
        """Decode the per-group metadata once into float arrays in tile storage order (kernel inputs)."""
        lay = self.layout
        self._int_matrix: PackedMatrix | None = None  # the integer kernel's view, built on first use
        T, n_g = lay.n_tiles, lay.groups_per_tile
        _, scale, zero, high = unpack_layer(lay, self.packed_tensors())
        pos_lo, pos_hi = tile_order(high, lay)
        scale_t, zero_t = scale.reshape(T, n_g), zero.reshape(T, n_g)
        s_lo, s_hi = scale_t.gather(1, pos_lo), scale_t.gather(1, pos_hi)
        self._meta = {
            "pos_lo": pos_lo.contiguous(),
            "pos_hi": pos_hi.contiguous(),
            # for the fused kernel: per tile, the rows then the group columns of its groups (no divisions)
            "rc_lo": torch.cat([pos_lo // lay.groups_per_row, pos_lo % lay.groups_per_row], 1)
            .to(torch.int32)
            .contiguous(),
            "rc_hi": torch.cat([pos_hi // lay.groups_per_row, pos_hi % lay.groups_per_row], 1)
            .to(torch.int32)
            .contiguous(),
            "s_lo": s_lo.contiguous(),
            "b_lo": (-s_lo * zero_t.gather(1, pos_lo)).contiguous(),
            "s_hi": s_hi.contiguous(),
            "b_hi": (-s_hi * zero_t.gather(1, pos_hi)).contiguous(),
        }

    # --- dequantization ----------------------------------------------------------------------
    def dequantize_tiles(self, t0: int, t1: int) -> torch.Tensor:
        """Rows [t0 * R, t1 * R) of W_hat as a dense float32 [rows, in] block."""
        lay, m = self.layout, self._meta
        nt, n_g, g = t1 - t0, lay.groups_per_tile, lay.group_size
        out = torch.empty(nt, n_g, g)
        for codes, bits, n, pos, s, b in (
            (self.codes_lo, lay.bits_low, lay.low_per_tile, "pos_lo", "s_lo", "b_lo"),
            (self.codes_hi, lay.bits_high, lay.high_per_tile, "pos_hi", "s_hi", "b_hi"),
        ):
            if n == 0:
                continue
            q = unpack_codes(codes[t0:t1], bits, n * g).reshape(nt, n, g).float()
            w = torch.addcmul(m[b][t0:t1].unsqueeze(-1), q, m[s][t0:t1].unsqueeze(-1))
            if n == n_g:
                out = w  # a uniform tile is already in natural order
            else:
                out.scatter_(1, m[pos][t0:t1].unsqueeze(-1).expand(-1, -1, g), w)
        return out.reshape(nt * lay.tile_rows, lay.in_features)

    def dequantize(self) -> torch.Tensor:
        return self.dequantize_tiles(0, self.layout.n_tiles)

    # --- forward paths -----------------------------------------------------------------------
    def resolve_mode(self, rows: int) -> str:
        if self.mode != "auto":
            return self.mode
        if rows <= FUSED_MAX_ROWS and fused_cpu.available():
            return "fused"
        return "naive"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(torch.float32)
        mode = self.resolve_mode(x2.shape[0])
        with torch.no_grad():
            if mode == "naive":
                y = self.forward_naive(x2)
            elif mode == "pipelined":
                y = self.forward_pipelined(x2)
            elif mode == "int8":
                y = self.forward_int8(x2)
            else:
                y = self.forward_fused(x2)
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*lead, self.out_features)

    def forward_naive(self, x2: torch.Tensor) -> torch.Tensor:
        """Dequantize the whole weight, then one matmul."""
        weight = self.dense_cache if self.dense_cache is not None else self.dequantize()
        return x2 @ weight.t()

    def forward_pipelined(self, x2: torch.Tensor) -> torch.Tensor:
        """Dequantize chunk i+1 on the worker thread while chunk i multiplies on this one."""
        lay = self.layout
        step = max(1, math.ceil(lay.n_tiles / max(1, self.pipeline_chunks)))
        chunks = [(t, min(t + step, lay.n_tiles)) for t in range(0, lay.n_tiles, step)]
        y_t = torch.empty(self.out_features, x2.shape[0])
        x_t = x2.t()
        # A worker thread per call, ended on return: a thread that stays alive after running torch
        # ops keeps its own OpenMP team, whose threads (under libgomp's default spin-wait, i.e. where
        # torch was imported before mlsys.environment set OMP_WAIT_POLICY=passive) spin after each
        # region; on 2 cores that slowed every later fp32 matvec and fused call of the main thread 1.5-2x.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="quant-dequant") as pool:
            pending = pool.submit(self.dequantize_tiles, *chunks[0])
            for i, (t0, t1) in enumerate(chunks):
                block = pending.result()
                if i + 1 < len(chunks):
                    pending = pool.submit(self.dequantize_tiles, *chunks[i + 1])
                torch.mm(block, x_t, out=y_t[t0 * lay.tile_rows : t1 * lay.tile_rows])
        return y_t.t()

    def forward_fused(self, x2: torch.Tensor) -> torch.Tensor:
        kernel = fused_cpu.load()
        if kernel is None:
            raise RuntimeError(f"fused CPU kernel unavailable: {fused_cpu.unavailable_reason()}")
        lay, m = self.layout, self._meta
        return kernel.fused_matmul(
            x2.contiguous(),
            self.codes_lo,
            m["rc_lo"],
            m["s_lo"],
            m["b_lo"],
            self.codes_hi,
            m["rc_hi"],
            m["s_hi"],
            m["b_hi"],
            lay.tile_rows,
            lay.groups_per_row,
            lay.group_size,
            lay.bits_low,
            lay.bits_high,
        )

    def forward_int8(self, x2: torch.Tensor) -> torch.Tensor:
        """The integer kernel (int8 activations, int_kernel.py) on the same packed buffers.

        Not chosen by `auto`, although it is several times faster than the float fused kernel at
        batch 1 (benchmarks/quant_kernel.py): it adds the int8 activation error, and `auto` keeps
        the layer's output the float product of its stored weights.
        """

        if not PackedMatrix.supports(self.layout):
            raise RuntimeError(
                f"integer kernel needs groups of a multiple of 32 and u8 minimums; this layer has "
                f"group {self.layout.group_size}, zeros {self.layout.zero_format}"
            )
        if self._int_matrix is None:  # built once per prepare(): a mixed layer's split layout copies its codes
            self._int_matrix = PackedMatrix.from_quant_linear(self)
        return self._int_matrix.matmul(x2)

    def extra_repr(self) -> str:
        lay = self.layout
        return (
            f"in={lay.in_features}, out={lay.out_features}, group={lay.group_size}, tile_rows={lay.tile_rows}, "
            f"{lay.high_per_tile}/{lay.groups_per_tile} groups at {lay.bits_high} bits, "
            f"{self.bits_per_weight():.3f} bits/weight, mode={self.mode}"
        )


def _after_load(module: QuantLinear, _incompatible_keys) -> None:
    module.dense_cache = None
    module.prepare()  # the decoded metadata must follow the freshly loaded packed buffers
