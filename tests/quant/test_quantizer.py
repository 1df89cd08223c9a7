import pytest
import torch

from components.quant import QuantSpec, quantize_weight
from components.quant.linear import unpack_layer
from components.quant.quantizer import group_scores


def llm_like_weight(out_f=64, in_f=256, seed=0):
    """Gaussian weights with a few large-range groups, as in real LLM layers."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=gen) * 0.02
    rows = torch.randint(0, out_f, (out_f // 4,), generator=gen)
    cols = torch.randint(0, in_f, (out_f // 4,), generator=gen)
    w[rows, cols] *= 12
    return w


def test_bits_per_weight_matches_a_hand_count():
    # 32 x 128 layer, groups of 64 -> 2 groups per row; tiles of 16 rows -> 32 groups per tile,
    # round(0.25 * 32) = 8 of them at 4 bits, 24 at 2 bits; 2 tiles.
    spec = QuantSpec(group_size=64, tile_rows=16, frac_high=0.25, scale_format="u8", zero_format="int")
    packed = quantize_weight(llm_like_weight(32, 128), spec)
    per_tile = (
        24 * 64 * 2  # 2-bit codes
        + 8 * 64 * 4  # 4-bit codes
        + 64  # 24 two-bit zeros = 48 bits, padded to two int32 words
        + 32  # 8 four-bit zeros = one word
        + 32 * 8  # one 8-bit scale code per group (second order)
        + 32
    )  # precision map: one bit per group
    total = 2 * per_tile + 32 * 16  # + one fp16 scale base per row
    assert sum(packed.bits().values()) == total
    assert packed.bits_per_weight() == pytest.approx(total / (32 * 128))
    assert packed.bits_per_weight() == pytest.approx(2.8125)


def test_bits_with_second_order_minima_match_a_hand_count():
    # Same layer, zero_format=u8: an 8-bit minimum code per group replaces the packed integer zeros,
    # plus an fp16 (lowest, step) pair per row.
    spec = QuantSpec(group_size=64, tile_rows=16, frac_high=0.25, scale_format="u8", zero_format="u8")
    packed = quantize_weight(llm_like_weight(32, 128), spec)
    per_tile = 24 * 64 * 2 + 8 * 64 * 4 + 32 * 8 + 32 * 8 + 32  # codes, scale codes, min codes, map
    per_row = 16 + 2 * 16  # scale base; min lowest + step
    assert sum(packed.bits().values()) == 2 * per_tile + 32 * per_row
    assert packed.bits()["zeros"] == 2 * 32 * 8 + 32 * 32


def test_fp16_scales_and_zeros_are_counted_at_16_bits():
    spec = QuantSpec(frac_high=0.0, scale_format="fp16", zero_format="fp16")
    packed = quantize_weight(llm_like_weight(32, 128), spec)
    # no map when a tile is uniform; codes 2 bits; fp16 scale + fp16 zero per group of 64
    assert packed.bits_per_weight() == pytest.approx(2 + 32 / 64)
    assert packed.bits()["map"] == 0


@pytest.mark.parametrize("tile_rows", [1, 4, 16])
def test_four_bit_groups_are_the_top_ranked_ones_of_each_tile(tile_rows):
    w = llm_like_weight(64, 256)
    spec = QuantSpec(frac_high=0.25, tile_rows=tile_rows)
    packed = quantize_weight(w, spec)
    _, _, _, high = unpack_layer(packed.layout, packed.tensors)
    scores = group_scores(w, spec)
    k = packed.layout.high_per_tile
    assert k == round(0.25 * tile_rows * 4)
    for t in range(64 // tile_rows):
        tile_high = high[t * tile_rows : (t + 1) * tile_rows].flatten()
        tile_scores = scores[t * tile_rows : (t + 1) * tile_rows].flatten()
        assert int(tile_high.sum()) == k  # the alignment constraint: same count in every tile
        assert tile_scores[tile_high].min() >= tile_scores[~tile_high].max()


def test_round_to_nearest_error_is_at_most_half_a_step():
    w = llm_like_weight()
    packed = quantize_weight(w, QuantSpec(frac_high=0.25))
    codes, scale, zero, high = unpack_layer(packed.layout, packed.tensors)
    w_hat = (codes.float() - zero.unsqueeze(-1)) * scale.unsqueeze(-1)
    err = (w_hat.reshape(w.shape) - w).abs().reshape(codes.shape)
    assert bool((err <= scale.unsqueeze(-1) * 0.5 + 1e-7).all())


def test_range_aware_beats_plain_and_random_two_bit():
    w = llm_like_weight(128, 512)

    def mse(spec):
        packed = quantize_weight(w, spec)
        codes, scale, zero, _ = unpack_layer(packed.layout, packed.tensors)
        return float((((codes.float() - zero.unsqueeze(-1)) * scale.unsqueeze(-1)).reshape(w.shape) - w).pow(2).mean())

    rtn2, mixed, random = (
        mse(QuantSpec(frac_high=0)),
        mse(QuantSpec(frac_high=0.25)),
        mse(QuantSpec(frac_high=0.25, score="random")),
    )
    assert mixed < random < rtn2


def test_scores_needing_calibration_say_so():
    with pytest.raises(ValueError, match="needs calibration"):
        quantize_weight(llm_like_weight(), QuantSpec(score="range_act"))


@pytest.mark.parametrize("field,value", [("method", "awq"), ("group_size", 40), ("frac_high", 1.5), ("bits_low", 3)])
def test_bad_spec_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        QuantSpec(**{field: value})


def test_in_features_not_a_multiple_of_group_is_rejected():
    with pytest.raises(ValueError, match="in_features=100"):
        quantize_weight(torch.randn(16, 100), QuantSpec())
