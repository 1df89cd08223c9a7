"""Group-wise asymmetric quantization with the paper's range-aware choice of 4-bit groups.

A weight W [out, in] is cut into groups of `group_size` consecutive weights along in_features.
Every group gets a scale s and a zero point z and is stored as codes q with w ~ s * (q - z).

Which groups get 4 bits (the paper's rule): rank groups by their range max(w) - min(w) (optionally
weighted by calibration activations, or by the Hessian-weighted 2-bit error) and give the top
`frac_high` of them 4 bits. With `score=fisher` and a `bit_budget`, the per-layer count comes from a
model-wide allocation instead (`allocation.py`), the layer's tiles still alike. The choice is constrained by
ALIGNMENT: every tile of `tile_rows` output
rows holds exactly k = round(frac_high * tile_rows * groups_per_row) 4-bit groups, so

- every tile's packed 2-bit codes, 4-bit codes and zero points occupy the same number of int32
  words, and tile t's data starts at t * (fixed stride): a kernel finds any tile with one multiply,
  no per-row offset table or prefix sum (the alignment problem the paper describes for GPUs);
- every tile carries identical work, so the tile-by-tile pipelined dequantization (and a GPU
  thread block per tile) stays balanced;
- within a tile the ranking is exact: the 4-bit groups are the k top-ranked groups of that tile.

Scales are optionally quantized again ("second order"): per output row an fp16 base b and an 8-bit
code c per group with s = (c + 1) * b / 256 (rounded up, so the range is never clipped).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from components.quant.packing import pack_bits, pack_codes
from components.quant.spec import QuantSpec


@dataclass
class LayerLayout:
    """Shapes and formats of one packed layer: enough to rebuild its empty buffers for loading."""

    in_features: int
    out_features: int
    group_size: int
    tile_rows: int
    high_per_tile: int  # 4-bit groups in every tile (the alignment constraint)
    bits_low: int
    bits_high: int
    scale_format: str
    zero_format: str
    has_bias: bool = False

    @property
    def groups_per_row(self) -> int:
        return self.in_features // self.group_size

    @property
    def groups_per_tile(self) -> int:
        return self.tile_rows * self.groups_per_row

    @property
    def low_per_tile(self) -> int:
        return self.groups_per_tile - self.high_per_tile

    @property
    def n_tiles(self) -> int:
        return self.out_features // self.tile_rows

    @property
    def has_map(self) -> bool:
        """A precision map is stored only when a tile mixes both precisions."""
        return 0 < self.high_per_tile < self.groups_per_tile

    def buffer_shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Every stored tensor of the layer: name -> (shape, dtype). The bit count sums these."""
        T, g = self.n_tiles, self.group_size

        def words(n_codes: int, bits: int) -> int:
            return math.ceil(n_codes * bits / 32)

        shapes = {
            "codes_lo": ((T, words(self.low_per_tile * g, self.bits_low)), torch.int32),
            "codes_hi": ((T, words(self.high_per_tile * g, self.bits_high)), torch.int32),
        }
        if self.scale_format == "u8":
            shapes["scale_codes"] = ((self.out_features, self.groups_per_row), torch.uint8)
            shapes["scale_base"] = ((self.out_features,), torch.float16)
        else:
            shapes["scales"] = ((self.out_features, self.groups_per_row), torch.float16)
        if self.zero_format == "u8":
            shapes["zero_codes"] = ((self.out_features, self.groups_per_row), torch.uint8)
            shapes["zero_base"] = ((self.out_features, 2), torch.float16)
        elif self.zero_format == "int":
            shapes["zeros_lo"] = ((T, words(self.low_per_tile, self.bits_low)), torch.int32)
            shapes["zeros_hi"] = ((T, words(self.high_per_tile, self.bits_high)), torch.int32)
        else:
            shapes["zeros"] = ((self.out_features, self.groups_per_row), torch.float16)
        if self.has_map:
            shapes["group_map"] = ((T, math.ceil(self.groups_per_tile / 8)), torch.uint8)
        return shapes

    def to_dict(self) -> dict:
        return asdict(self)


BIT_CATEGORIES = {
    "codes_lo": "codes",
    "codes_hi": "codes",
    "scale_codes": "scales",
    "scale_base": "scales",
    "scales": "scales",
    "zeros_lo": "zeros",
    "zeros_hi": "zeros",
    "zeros": "zeros",
    "zero_codes": "zeros",
    "zero_base": "zeros",
    "group_map": "map",
    "bias": "bias",
}


def bits_breakdown(layout: LayerLayout) -> dict[str, int]:
    """Exact stored bits of a packed layer by category (codes, scales, zeros, map, outliers, bias)."""
    out = {"codes": 0, "scales": 0, "zeros": 0, "map": 0, "outliers": 0, "bias": 0}
    for name, (shape, dtype) in layout.buffer_shapes().items():
        out[BIT_CATEGORIES[name]] += math.prod(shape) * torch.empty((), dtype=dtype).element_size() * 8
    if layout.has_bias:
        out["bias"] = layout.out_features * 32  # kept in fp32
    # No sparse outliers are kept in this scheme; the entry stays so the accounting names every part.
    return out


def effective_tile_rows(out_features: int, tile_rows: int) -> int:
    """The tile height used for a layer: `tile_rows`, or its largest divisor of out_features."""
    return math.gcd(out_features, tile_rows)


def high_groups_per_tile(spec: QuantSpec, groups_per_tile: int) -> int:
    return int(round(spec.frac_high * groups_per_tile))


# --- choosing the 4-bit groups ----------------------------------------------------------------


def group_scores(
    weight: torch.Tensor, spec: QuantSpec, act_sq: torch.Tensor | None = None, fisher: torch.Tensor | None = None
) -> torch.Tensor:
    """Score [out, G] of every group; the highest-scored groups of each tile get bits_high.

    `act_sq` is the mean of x**2 per input channel over calibration tokens (the Hessian diagonal
    of the layer's least-squares objective, up to a factor of 2). `fisher` [out, in] is the
    diagonal Fisher of the model's loss w.r.t. this weight (see `allocation.py`).
    """
    out_f, in_f = weight.shape
    g = spec.group_size
    groups = weight.float().reshape(out_f, in_f // g, g)
    rng = groups.amax(-1) - groups.amin(-1)
    if spec.score == "range":
        return rng
    if spec.score == "random":
        gen = torch.Generator().manual_seed(spec.seed)
        return torch.rand(rng.shape, generator=gen)
    if spec.score == "fisher":
        if fisher is None:
            raise ValueError(
                "score='fisher' needs calibration gradients: set eval.calibration_windows > 0 in the "
                "quantize flow or use score=range"
            )

        from components.quant.allocation import fisher_gains  # noqa: PLC0415  (import cycle: allocation uses this module)

        return fisher_gains(weight, fisher, spec)
    if act_sq is None:
        raise ValueError(
            f"score={spec.score!r} needs calibration activations: "
            "set eval.calibration_windows > 0 in the quantize flow "
            "or use score=range"
        )
    act_sq = act_sq.float().reshape(1, in_f // g, g)
    if spec.score == "range_act":
        return rng * act_sq.sqrt().mean(-1)  # range times the group's RMS input
    # hessian_error: sum_j H_jj (w_j - Q_low(w_j))**2, the expected output error of the 2-bit group.
    scale, zero = minmax_params(groups, spec.bits_low)
    err = (fake_quant(groups, scale, zero, spec.bits_low) - groups) ** 2
    return (err * act_sq).sum(-1)


def select_high_groups(scores: torch.Tensor, high_per_tile: int, tile_rows: int) -> torch.Tensor:
    """bool [out, G]: the `high_per_tile` top-scored groups of every tile of `tile_rows` rows."""
    out_f, n_groups = scores.shape
    tiles = scores.reshape(out_f // tile_rows, tile_rows * n_groups)
    mask = torch.zeros_like(tiles, dtype=torch.bool)
    if high_per_tile:
        top = tiles.topk(high_per_tile, dim=1).indices
        mask.scatter_(1, top, True)
    return mask.reshape(out_f, n_groups)


# --- fitting scales and zero points --------------------------------------------------------------


def minmax_params(groups: torch.Tensor, bits: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest asymmetric parameters: scale = range / (2**bits - 1), real zero = -min / scale."""
    qmax = (2 ** torch.as_tensor(bits)) - 1
    lo, hi = groups.amin(-1), groups.amax(-1)
    scale = ((hi - lo) / qmax).clamp(min=1e-8)
    return scale, -lo / scale


def fake_quant(groups: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantize-dequantize groups [..., g] with an integer zero point (used to score groups)."""
    z = torch.round(zero).unsqueeze(-1)
    q = torch.clamp(torch.round(groups / scale.unsqueeze(-1)) + z, 0, 2**bits - 1)
    return (q - z) * scale.unsqueeze(-1)


def encode_scales(scale: torch.Tensor, fmt: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Stored form of the scales [out, G] and the scales the kernels will actually use."""
    if fmt == "fp16":
        stored = scale.to(torch.float16)
        return {"scales": stored}, stored.float()
    # Second order: fp16 row base, rounded up so that every code's scale >= the wanted scale.
    base = (scale.amax(1) * (1 + 2.0**-10)).to(torch.float16)
    base_f = base.float().clamp(min=1e-8)
    codes = torch.clamp(torch.ceil(scale / base_f[:, None] * 256) - 1, 0, 255).to(torch.uint8)
    return {"scale_codes": codes, "scale_base": base}, decode_u8_scales(codes, base)


def encode_mins(
    group_min: torch.Tensor, base: torch.Tensor | None = None
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Second-order group minima [out, G]: per row an fp16 (lowest, step) and an 8-bit code per group.

    The minimum plays the role of a real-valued zero point (w = m + s * q), which a 2-bit group needs:
    an integer zero can only shift the 4-level grid by whole steps. `base` fixes (lowest, step).
    """
    if base is None:
        lo = group_min.amin(1)
        step = (group_min.amax(1) - lo) / 255
        base = torch.stack([lo, step], 1).to(torch.float16)
    lo_f, step_f = base[:, 0].float(), base[:, 1].float().clamp(min=1e-12)
    codes = torch.clamp(torch.round((group_min - lo_f[:, None]) / step_f[:, None]), 0, 255).to(torch.uint8)
    return {"zero_codes": codes, "zero_base": base}, decode_u8_mins(codes, base)


def decode_u8_mins(codes: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    return base[:, 0].float()[:, None] + codes.float() * base[:, 1].float()[:, None]


def decode_u8_scales(codes: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    return (codes.float() + 1) * (base.float()[:, None] / 256)


_DEFAULT_HQQ_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "hqq"


def hqq_cache_dir() -> Path | None:
    """Where HQQ fits are kept: $QUANT_HQQ_CACHE, the project's .cache/hqq by default, None if set empty."""
    value = os.environ.get("QUANT_HQQ_CACHE")
    if value == "":
        return None
    return Path(value) if value else _DEFAULT_HQQ_CACHE


def hqq_params(groups: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HQQ's half-quadratic fit of (scale, real zero) for groups [N, g] (the pip `hqq` package, CPU).

    The fit is deterministic but slow on CPU (~5 s per million weights on one core), so results are
    kept on disk keyed by a hash of the exact group values, bits and hqq version (QUANT_HQQ_CACHE;
    an empty value disables the cache). A cached fit is the same numbers the fit would produce again.
    """
    try:
        import hqq  # noqa: PLC0415  (optional dependency)
        from hqq.core.quantize import Quantizer  # noqa: PLC0415  (optional dependency)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "method=hqq needs the `hqq` package: pip install -c constraints.txt hqq==0.2.8.post1"
        ) from exc
    if groups.shape[0] == 0:
        return groups.new_zeros(0), groups.new_zeros(0)
    groups = groups.float().contiguous()
    cache_file = None
    if (cache := hqq_cache_dir()) is not None:
        key = hashlib.sha256(groups.numpy().tobytes() + f"{tuple(groups.shape)}|{bits}|{hqq.__version__}".encode())
        cache_file = cache / f"{key.hexdigest()[:32]}.pt"
        if cache_file.exists():
            cached = torch.load(cache_file)
            return cached["scale"], cached["zero"]
    _, meta = Quantizer.quantize(
        groups,
        nbits=bits,
        group_size=groups.shape[1],
        axis=1,
        optimize=True,
        round_zero=False,
        bitpack=False,
        device="cpu",
    )
    scale, zero = meta["scale"].reshape(-1).float(), meta["zero"].reshape(-1).float()
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        torch.save({"scale": scale, "zero": zero}, tmp)
        tmp.rename(cache_file)  # atomic: a half-written fit is never read
    return scale, zero


# --- the whole layer -----------------------------------------------------------------------------


@dataclass
class PackedWeight:
    layout: LayerLayout
    tensors: dict[str, torch.Tensor]
    bias: torch.Tensor | None = None

    def bits(self) -> dict[str, int]:
        return bits_breakdown(self.layout)

    def bits_per_weight(self) -> float:
        return sum(self.bits().values()) / (self.layout.in_features * self.layout.out_features)


def layout_for(
    weight_shape: tuple[int, int], spec: QuantSpec, has_bias: bool = False, high_per_tile: int | None = None
) -> LayerLayout:
    """The layer's layout; `high_per_tile` overrides frac_high (a per-layer allocation)."""
    out_f, in_f = weight_shape
    if in_f % spec.group_size:
        raise ValueError(f"in_features={in_f} is not a multiple of group_size={spec.group_size}")
    rows = effective_tile_rows(out_f, spec.tile_rows)
    per_tile = rows * (in_f // spec.group_size)
    if high_per_tile is None:
        high_per_tile = high_groups_per_tile(spec, per_tile)
    elif not 0 <= high_per_tile <= per_tile:
        raise ValueError(f"high_per_tile={high_per_tile} is outside [0, {per_tile}] groups per tile")
    return LayerLayout(
        in_f,
        out_f,
        spec.group_size,
        rows,
        high_per_tile,
        spec.bits_low,
        spec.bits_high,
        spec.scale_format,
        spec.zero_format,
        has_bias,
    )


def quantize_weight(
    weight: torch.Tensor,
    spec: QuantSpec,
    act_sq: torch.Tensor | None = None,
    hessian: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    fisher: torch.Tensor | None = None,
    high_per_tile: int | None = None,
) -> PackedWeight:
    """Quantize W [out, in] under `spec` and pack it (see the module docstring for the layout).

    `high_per_tile` (from `allocation.allocate_high_groups`) overrides spec.frac_high for this layer.
    """
    if not spec.quantizes:
        raise ValueError("spec.method='none' keeps the fp32 weight: nothing to pack")
    W = weight.detach().float()
    layout = layout_for(tuple(W.shape), spec, bias is not None, high_per_tile)
    high = select_high_groups(group_scores(W, spec, act_sq, fisher), layout.high_per_tile, layout.tile_rows)
    bits = torch.where(high, spec.bits_high, spec.bits_low)
    if spec.method == "gptq":
        from components.quant.gptq import gptq_quantize  # noqa: PLC0415  (import cycle: gptq uses this module)

        if hessian is None:
            raise ValueError(
                "method=gptq needs the calibration Hessian: set eval.calibration_windows > 0 in the quantize flow"
            )
        codes, scale_store, zero = gptq_quantize(W, bits, spec, hessian)
    else:
        codes, scale_store, zero = _fit_groups(W, bits, spec)
    return PackedWeight(layout, pack_layer(codes, zero, high, scale_store, layout), bias)


def _fit_groups(W: torch.Tensor, bits: torch.Tensor, spec: QuantSpec):
    """Codes [out, G, g], stored scale tensors and zero [out, G] for round-to-nearest or HQQ."""
    out_f, in_f = W.shape
    groups = W.reshape(out_f, in_f // spec.group_size, spec.group_size)
    if spec.method == "hqq":
        scale = torch.empty(bits.shape)
        zero = torch.empty(bits.shape)
        for b in (spec.bits_low, spec.bits_high):
            sel = bits == b
            scale[sel], zero[sel] = hqq_params(groups[sel], b)
    else:
        scale, zero = minmax_params(groups, bits)
    store, scale_used = encode_scales(scale, spec.scale_format)
    if spec.zero_format == "u8":
        group_min = -zero * scale_used if spec.method == "hqq" else groups.amin(-1)
        zero_store, min_used = encode_mins(group_min)
        store.update(zero_store)
        zero = -min_used / scale_used
    else:
        if spec.method == "rtn":
            zero = -groups.amin(-1) / scale_used  # refit to the stored scale so that the minimum maps to a code
        zero = _store_zero(zero, bits, spec.zero_format)
    codes = quantize_codes(groups, scale_used, zero, bits)
    return codes, store, zero


def _store_zero(zero: torch.Tensor, bits: torch.Tensor, fmt: str) -> torch.Tensor:
    qmax = (2**bits) - 1
    if fmt == "int":
        return torch.clamp(torch.round(zero), torch.zeros_like(qmax), qmax).float()
    return zero.to(torch.float16).float()


def quantize_codes(groups: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Integer codes of groups [..., g] given the scale and zero the kernels will use."""
    qmax = ((2**bits) - 1).unsqueeze(-1)
    q = torch.round(groups / scale.unsqueeze(-1) + zero.unsqueeze(-1))
    return torch.minimum(torch.clamp(q, min=0), qmax).to(torch.uint8)


def tile_order(high: torch.Tensor, layout: LayerLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (row-major within the tile) of the low and high groups of every tile, ascending."""
    flat = high.reshape(layout.n_tiles, layout.groups_per_tile)
    order = torch.sort(flat.to(torch.int8), dim=1, stable=True).indices
    return order[:, : layout.low_per_tile], order[:, layout.low_per_tile :]


def pack_layer(
    codes: torch.Tensor, zero: torch.Tensor, high: torch.Tensor, scale_store: dict, layout: LayerLayout
) -> dict[str, torch.Tensor]:
    """Split every tile into its 2-bit and 4-bit groups and pack each run into int32 words."""
    T, n_g, g = layout.n_tiles, layout.groups_per_tile, layout.group_size
    pos_lo, pos_hi = tile_order(high, layout)
    tile_codes = codes.reshape(T, n_g, g)
    tile_zero = zero.reshape(T, n_g)

    def pick(values: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if values.dim() == 3:
            return values.gather(1, pos.unsqueeze(-1).expand(-1, -1, g)).reshape(T, -1)
        return values.gather(1, pos)

    tensors = {
        "codes_lo": pack_codes(pick(tile_codes, pos_lo), layout.bits_low),
        "codes_hi": pack_codes(pick(tile_codes, pos_hi), layout.bits_high),
        **scale_store,  # scales, and the u8 minima when zero_format=u8
    }
    if layout.zero_format == "int":
        tensors["zeros_lo"] = pack_codes(pick(tile_zero, pos_lo).to(torch.uint8), layout.bits_low)
        tensors["zeros_hi"] = pack_codes(pick(tile_zero, pos_hi).to(torch.uint8), layout.bits_high)
    elif layout.zero_format == "fp16":
        tensors["zeros"] = zero.to(torch.float16)
    if layout.has_map:
        tensors["group_map"] = pack_bits(high.reshape(T, n_g))
    expected = layout.buffer_shapes()
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != expected[name][0] or tensor.dtype != expected[name][1]:
            raise AssertionError(f"packed {name} is {tuple(tensor.shape)} {tensor.dtype}, layout says {expected[name]}")
    return tensors


def fake_quantize_uniform(weight: torch.Tensor, bits: int, spec: QuantSpec) -> tuple[torch.Tensor, LayerLayout]:
    """Round-to-nearest at one width for every group, returned dequantized, with the layout it would store.

    Any width 1-8 (3 bits, which the packed kernels do not store, is the frontier's middle uniform point);
    the spec's group size and scale / zero formats, the same fit as `quantize_weight` with method=rtn.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits={bits} is outside 1..8")
    W = weight.detach().float()
    layout = dataclasses.replace(layout_for(tuple(W.shape), spec), bits_low=bits, bits_high=bits, high_per_tile=0)
    width = torch.full((layout.out_features, layout.groups_per_row), bits)
    codes, store, zero = _fit_groups(W, width, dataclasses.replace(spec, method="rtn"))
    scale = (
        decode_u8_scales(store["scale_codes"], store["scale_base"])
        if spec.scale_format == "u8"
        else store["scales"].float()
    )
    dequantized = (codes.float() - zero.unsqueeze(-1)) * scale.unsqueeze(-1)
    return dequantized.reshape(W.shape), layout
