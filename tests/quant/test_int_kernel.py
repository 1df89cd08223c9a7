"""The integer kernel against the dequantized reference, within the bound int8 activations allow.

Bound: activations are rounded per block of 32 to d * a with d = max|x| / 127, so |x_j - d a_j| <= d / 2
(d / 256 with the residual level: steps of d / 256 clamped to +-127); the minimum's term uses the exact
block sums. Hence per output |y - x W_hat^T| <= sum_j step_j * |s_j q_j|, plus float rounding (tested
with a relative slack).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants
from hypothesis import given, settings
from hypothesis import strategies as st

from components.quant import QuantLinear, QuantSpec, int_kernel, quantize_weight, reference_dequantize
from components.quant.packed_matrix import PackedMatrix, product_chain
from components.quant.packing import unpack_bits, unpack_codes

pytestmark = pytest.mark.skipif(
    not int_kernel.available(), reason=f"no C++ toolchain: {int_kernel.unavailable_reason()}"
)

SPECS = {
    "mixed_2_4_g32": QuantSpec(frac_high=0.25, group_size=32),
    "rtn2_g64": QuantSpec(frac_high=0.0, group_size=64),
    "rtn4_fp16_scales": QuantSpec(frac_high=1.0, group_size=32, scale_format="fp16"),
    "mixed_2_8_g32_tile8": QuantSpec(frac_high=0.3, bits_high=8, group_size=32, tile_rows=8),
    "mixed_4_8_g128": QuantSpec(frac_high=0.4, bits_low=4, bits_high=8, group_size=128),
}


def activation_bound(x: torch.Tensor, weight_part: torch.Tensor, levels: int) -> torch.Tensor:
    """sum_j d_block(j) / 2 * |s q|_j (levels=1), or / 256 (levels=2): [N, out]."""
    N, K = x.shape
    d = x.reshape(N, K // 32, 32).abs().amax(-1) / 127
    half_step = (d / 2 if levels == 1 else d / 256).repeat_interleave(32, 1)
    return half_step @ weight_part.abs().t()


def scaled_codes(matrix: PackedMatrix) -> torch.Tensor:
    scale, _ = matrix.scales_and_mins()
    return (matrix.codes().float() * scale[..., None]).reshape(matrix.out_features, matrix.in_features)


def check_within_bound(matrix: PackedMatrix, x: torch.Tensor, path: str, levels: int = 1) -> torch.Tensor:
    ref = x @ matrix.dequantize().t()
    got = matrix.matmul(x, path, levels)
    bound = activation_bound(x, scaled_codes(matrix), levels)
    slack = 1e-5 * (x.abs() @ matrix.dequantize().abs().t()) + 1e-6
    err = (got - ref).abs()
    assert got.shape == ref.shape
    assert bool((err <= bound + slack).all()), f"{path}: max excess {float((err - bound - slack).max())}"
    return got


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("rows", [1, 2, 3, 8, 16, 17])
def test_every_path_is_within_the_int8_bound(name, rows):
    spec = SPECS[name]
    w = torch.randn(48, 256, generator=torch.Generator().manual_seed(rows)) * 0.05
    layer = QuantLinear.from_packed(quantize_weight(w, spec))
    matrix = PackedMatrix.from_quant_linear(layer)
    torch.testing.assert_close(matrix.dequantize(), reference_dequantize(layer.layout, layer.packed_tensors()))
    x = torch.randn(rows, 256, generator=torch.Generator().manual_seed(100 + rows))
    x[:, 5] *= 30  # an outlier channel, as real activations have: it coarsens its block's step
    outs = {path: check_within_bound(matrix, x, path) for path in int_kernel.paths()}
    portable = outs["portable"]
    for path, y in outs.items():  # the same integers on every path: equal up to float summation order
        torch.testing.assert_close(y, portable, rtol=1e-5, atol=1e-4, msg=path)


@pytest.mark.parametrize("path", ["portable", "avx2", "avx_vnni", "avx512_vnni"])
def test_residual_level_is_within_its_bound_and_much_tighter(path):
    if path not in int_kernel.paths():
        pytest.skip(f"this CPU cannot run {path}")
    matrix = PackedMatrix.quantize_asymmetric(torch.randn(64, 192) * 0.1, 4)
    x = torch.randn(5, 192, generator=torch.Generator().manual_seed(3))
    ref = x @ matrix.dequantize().t()
    one = (check_within_bound(matrix, x, path, 1) - ref).abs().max()
    two = (check_within_bound(matrix, x, path, 2) - ref).abs().max()
    assert two < one / 20


def test_odd_shapes_and_empty_batch():
    # 3 groups per row, 24 rows (tile height falls to gcd(24, 16) = 8)
    matrix = PackedMatrix.quantize_asymmetric(torch.randn(24, 96), 2)
    assert matrix.tile_rows == 8
    for path in int_kernel.paths():
        check_within_bound(matrix, torch.randn(5, 96), path)
    assert matrix.matmul(torch.randn(0, 96)).shape == (0, 24)
    with pytest.raises(ValueError, match=r"x must be \[N, 96\]"):
        matrix.matmul(torch.randn(2, 95))
    with pytest.raises(ValueError, match="multiple of 32"):
        PackedMatrix.quantize_asymmetric(torch.randn(16, 80), 4)


def test_zero_activations_and_zero_blocks():
    matrix = PackedMatrix.quantize_asymmetric(torch.randn(32, 128), 4)
    x = torch.zeros(2, 128)
    x[1, 64:] = torch.randn(64)  # first two blocks all zero: d = 0 must not divide by zero
    ref = x @ matrix.dequantize().t()
    y = matrix.matmul(x)
    assert torch.isfinite(y).all()
    assert torch.equal(y[0], torch.zeros(32))
    assert bool(((y - ref).abs() <= activation_bound(x, scaled_codes(matrix), 1) + 1e-5).all())


def test_forcing_a_path(monkeypatch):
    monkeypatch.setenv("QUANT_INT_PATH", "portable")
    assert int_kernel.best_path() == "portable"
    monkeypatch.setenv("QUANT_INT_PATH", "sse9")
    with pytest.raises(ValueError, match="sse9"):
        int_kernel.best_path()
    monkeypatch.delenv("QUANT_INT_PATH")
    assert int_kernel.best_path() == int_kernel.paths()[0]
    assert int_kernel.paths()[-1] == "portable"


def test_gguf_blocks_are_read_exactly():
    """Q4_1 and Q8_0 bytes written by the gguf package's own quantizer decode to its own dequantization."""
    w = np.random.default_rng(0).standard_normal((32, 128)).astype(np.float32)
    for kind, build in (
        (GGMLQuantizationType.Q4_1, PackedMatrix.from_gguf_q4_1),
        (GGMLQuantizationType.Q8_0, PackedMatrix.from_gguf_q8_0),
    ):
        blocks = quants.quantize(w, kind)
        expected = torch.from_numpy(quants.dequantize(blocks, kind).reshape(32, 128).astype(np.float32))
        matrix = build(blocks, 32, 128)
        torch.testing.assert_close(matrix.dequantize(), expected, rtol=0, atol=0)
        torch.testing.assert_close(matrix.rows(torch.tensor([3, 0, 31])), expected[[3, 0, 31]], rtol=0, atol=0)
        check_within_bound(matrix, torch.randn(4, 128), int_kernel.best_path())


def test_quant_linear_int8_mode_is_within_the_bound():
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(7)) * 0.05
    bias = torch.randn(32)
    layer = QuantLinear.from_packed(quantize_weight(w, QuantSpec(frac_high=0.25), bias=bias), mode="int8")
    x = torch.randn(2, 3, 128)
    matrix = PackedMatrix.from_quant_linear(layer)
    bound = activation_bound(x.reshape(6, 128), scaled_codes(matrix), 1).reshape(2, 3, 32)
    ref = x @ matrix.dequantize().t() + bias
    assert bool(((layer(x) - ref).abs() <= bound + 1e-4).all())
    # the kernel's view of the layer (a split copy of its codes) follows weights loaded in place
    other = QuantLinear.from_packed(quantize_weight(-2 * w, QuantSpec(frac_high=0.25), bias=bias), mode="int8")
    layer.load_state_dict(other.state_dict())
    torch.testing.assert_close(layer(x), other(x))
    with pytest.raises(RuntimeError, match="multiple of 32"):
        QuantLinear.from_packed(quantize_weight(w, QuantSpec(group_size=16)), mode="int8")(x)


def assert_paths_agree(matrix: PackedMatrix, x: torch.Tensor, levels: int = 1) -> None:
    """Every path within the bound of `levels` int8 levels, and equal to the portable path up to float
    summation order (relative to the size of the terms summed: the scale and minimum terms can cancel)."""
    outs = {path: check_within_bound(matrix, x, path, levels) for path in int_kernel.paths()}
    terms = float((x.abs() @ matrix.dequantize().abs().t()).max())
    for path, y in outs.items():
        torch.testing.assert_close(y, outs["portable"], rtol=1e-5, atol=1e-5 * terms + 1e-6, msg=path)


@pytest.mark.parametrize("in_features", [288, 544, 1056])  # 9, 17, 33 groups: a partial last chunk of 8
@pytest.mark.parametrize("name", ["mixed_2_4_g32", "rtn4_fp16_scales", "mixed_2_8_g32_tile8"])
def test_rows_whose_groups_end_in_a_partial_chunk(name, in_features):
    """The AVX2 row loop reads metadata 8 groups at a time; a row's last chunk of 1-7 groups is shifted
    and masked (groups of 32; the other layouts were covered above)."""
    w = torch.randn(40, in_features, generator=torch.Generator().manual_seed(in_features)) * 0.05
    matrix = PackedMatrix.from_quant_linear(QuantLinear.from_packed(quantize_weight(w, SPECS[name])))
    x = torch.randn(3, in_features, generator=torch.Generator().manual_seed(7))
    assert_paths_agree(matrix, x)


@settings(max_examples=25, deadline=None)
@given(
    groups=st.integers(1, 40),
    tiles=st.integers(1, 3),
    batch=st.integers(1, 17),
    bits=st.sampled_from([2, 4]),
    levels=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_uniform_matrices_of_any_width_agree_on_every_path(groups, tiles, batch, bits, levels, seed):
    """Batch 1 takes AVX2's four-row loop, which reads 2-bit blocks four and 4-bit blocks two per load
    (a row's last blocks one at a time), with the residual level too."""
    gen = torch.Generator().manual_seed(seed)
    matrix = PackedMatrix.quantize_asymmetric(torch.randn(16 * tiles, 32 * groups, generator=gen), bits)
    x = torch.randn(batch, 32 * groups, generator=gen) * torch.rand(1, 32 * groups, generator=gen) * 10
    assert_paths_agree(matrix, x, levels)


@settings(max_examples=25, deadline=None)
@given(
    tile_rows=st.sampled_from([1, 2, 3, 5, 6, 7, 8, 12, 16]),
    tiles=st.integers(1, 3),
    groups=st.integers(1, 40),
    batch=st.integers(1, 3),
    bits=st.sampled_from([2, 4]),
    seed=st.integers(0, 2**16),
)
def test_uniform_tiles_of_any_height_agree_on_every_path(tile_rows, tiles, groups, batch, bits, seed):
    """At batch 1 the AVX2 path takes a tile's rows four at a time; a tile whose height is not a
    multiple of 4 ends with single rows."""
    gen = torch.Generator().manual_seed(seed)
    out_f, in_f = tile_rows * tiles, 32 * groups
    base = PackedMatrix.quantize_asymmetric(torch.randn(out_f, in_f, generator=gen), bits)
    scale, minimum = base.scales_and_mins()
    matrix = PackedMatrix.uniform(base.codes().reshape(out_f, in_f), scale, minimum, bits, tile_rows)
    assert matrix.tile_rows == tile_rows
    assert_paths_agree(matrix, torch.randn(batch, in_f, generator=gen))


@settings(max_examples=25, deadline=None)
@given(
    frac_high=st.floats(0.05, 0.95),
    groups=st.integers(1, 70),
    tile_rows=st.sampled_from([4, 6, 8, 13, 16]),
    tiles=st.integers(1, 2),
    batch=st.integers(1, 4),
    levels=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_mixed_matrices_of_any_width_agree_on_every_path(frac_high, groups, tile_rows, tiles, batch, levels, seed):
    """A mixed row's block lists are built from its map 8 groups per step; rows of more than 56 groups
    read the map in several words; the split layout's tile lists cover rows of any length."""
    gen = torch.Generator().manual_seed(seed)
    spec = QuantSpec(frac_high=frac_high, group_size=32, tile_rows=tile_rows)
    w = torch.randn(tile_rows * tiles, 32 * groups, generator=gen) * 0.05
    matrix = PackedMatrix.from_quant_linear(QuantLinear.from_packed(quantize_weight(w, spec)))
    x = torch.randn(batch, 32 * groups, generator=gen)
    # both layouts on every width: split adds the high groups from a tile list up to 32 groups a row and
    # row by row beyond (split needs a map: some rounded shares leave a small matrix at one precision)
    for layout in ("split", "streams") if matrix.group_map.numel() else ("streams",):
        matrix.kernel_layout = layout
        assert_paths_agree(matrix, x, levels)


@pytest.mark.parametrize(("group_size", "tile_rows", "rows"), [(32, 16, 1), (32, 6, 3), (64, 8, 1), (64, 8, 9)])
def test_split_layout_holds_the_same_codes_and_gives_the_stored_layouts_product(group_size, tile_rows, rows):
    """A mixed 2/4-bit matrix goes to the kernel as a dense 2-bit stream (a high group's top bits) and
    the high groups' low bits: the same bytes, codes 4 h + l, and on every path the product of the
    stored two-stream layout up to float summation order."""
    gen = torch.Generator().manual_seed(rows)
    spec = QuantSpec(frac_high=0.3, group_size=group_size, tile_rows=tile_rows)
    w = torch.randn(tile_rows * 5, 320, generator=gen) * 0.05
    matrix = PackedMatrix.from_quant_linear(QuantLinear.from_packed(quantize_weight(w, spec)))
    assert matrix.kernel_layout == "split"
    dense, low = matrix.split_streams()
    assert dense.numel() + low.numel() == matrix.codes_lo.numel() + matrix.codes_hi.numel()
    T, g = matrix.out_features // tile_rows, group_size
    codes = matrix.codes().reshape(T, -1, g)
    high = unpack_bits(matrix.group_map, codes.shape[1])
    h = unpack_codes(dense, 2).reshape(T, -1, g)
    rebuilt = h.clone()
    rebuilt[high] = h[high] * 4 + unpack_codes(low, 2).reshape(-1, g)
    assert torch.equal(rebuilt, codes)
    x = torch.randn(rows, 320, generator=gen)
    for path in int_kernel.paths():
        split = check_within_bound(matrix, x, path)
        matrix.kernel_layout = "streams"
        stored = matrix.matmul(x, path)
        matrix.kernel_layout = "split"
        torch.testing.assert_close(split, stored, rtol=1e-5, atol=1e-5, msg=path)


def test_split_layout_is_refused_where_there_is_no_mixed_2_4_map():
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    for spec in (QuantSpec(frac_high=1.0), QuantSpec(frac_high=0.3, bits_high=8)):
        matrix = PackedMatrix.from_quant_linear(QuantLinear.from_packed(quantize_weight(w, spec)))
        assert matrix.kernel_layout == "streams"
        matrix.kernel_layout = "split"
        with pytest.raises(ValueError, match="split layout is for mixed 2/4-bit"):
            matrix.matmul(torch.randn(1, 64))


@pytest.mark.parametrize("threads", [1, 2])
def test_a_chain_of_products_equals_its_products_one_by_one(threads):
    gen = torch.Generator().manual_seed(11)
    w = torch.randn(48, 576, generator=gen) * 0.05
    matrices = [
        PackedMatrix.from_quant_linear(QuantLinear.from_packed(quantize_weight(w, SPECS["mixed_2_4_g32"]))),
        PackedMatrix.quantize_asymmetric(w, 4),
        PackedMatrix.quantize_asymmetric(w[:16], 2),
    ]
    x = torch.randn(3, 576, generator=gen)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ys = product_chain(matrices).forward(x)
    finally:
        torch.set_num_threads(before)
    assert [tuple(y.shape) for y in ys] == [(3, 48), (3, 48), (3, 16)]
    for matrix, y in zip(matrices, ys):
        assert torch.equal(y, matrix.matmul(x))


def test_a_chain_refuses_mismatched_matrices():
    chain = product_chain([PackedMatrix.quantize_asymmetric(torch.randn(16, 64), 4)])
    with pytest.raises(RuntimeError, match="x's 32 features"):
        chain.forward(torch.randn(1, 64)[:, :32].contiguous())
    mixed_widths = product_chain(
        [
            PackedMatrix.quantize_asymmetric(torch.randn(16, 64), 4),
            PackedMatrix.quantize_asymmetric(torch.randn(16, 96), 4),
        ]
    )
    with pytest.raises(RuntimeError, match="every matrix of a chain"):
        mixed_widths.forward(torch.randn(1, 64))
