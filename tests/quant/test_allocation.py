"""Model-wide Fisher allocation of the 4-bit groups under an exact bit budget."""

import pytest
import torch

from components.lm.model import GPT, GPTConfig
from components.quant import QuantLinear, QuantSpec, quantize_weight
from components.quant.allocation import allocate_high_groups, fisher_gains, layout_bits, rtn_squared_error
from components.quant.linear import unpack_layer
from components.quant.model import calibrate, fisher_diagonal, model_bits, quantize_model, target_linears
from components.quant.quantizer import layout_for
from tests.quant.test_quantizer import llm_like_weight


def test_layout_bits_with_a_per_layer_count_match_a_hand_count():
    # 32 x 128 layer, group 32 -> 4 groups per row, 64 per 16-row tile, 2 tiles; 5 of 64 at 4 bits.
    layout = layout_for((32, 128), QuantSpec(group_size=32, score="fisher", bit_budget=2.9), high_per_tile=5)
    per_tile = (
        59 * 32 * 2  # 2-bit codes: 3776 bits = 118 words exactly
        + 5 * 32 * 4  # 4-bit codes: 640 bits = 20 words
        + 64 * 8
        + 64 * 8  # 8-bit scale code and 8-bit minimum code per group
        + 64
    )  # precision map, one bit per group
    per_row = 16 + 32  # fp16 scale base; fp16 (lowest, step) of the minima
    assert layout_bits(layout, 5) == 2 * per_tile + 32 * per_row
    # a uniform tile stores no map
    assert layout_bits(layout, 0) == 2 * (64 * 32 * 2 + 64 * 16) + 32 * per_row


def test_fisher_gain_is_the_weighted_error_drop():
    w = llm_like_weight(16, 64)
    fisher = torch.rand(16, 64, generator=torch.Generator().manual_seed(1))
    spec = QuantSpec(group_size=32, score="fisher")
    gains = fisher_gains(w, fisher, spec)
    g = w.reshape(16, 2, 32)
    expected = (fisher.reshape(16, 2, 32) * (rtn_squared_error(g, 2) - rtn_squared_error(g, 4))).sum(-1)
    torch.testing.assert_close(gains, expected)
    assert bool((gains >= 0).all())  # 4 bits never round worse than 2 on the same range


def _two_layers(gain_a: float, gain_b: float):
    spec = QuantSpec(group_size=32, score="fisher", bit_budget=2.9)
    lay = layout_for((32, 128), spec)
    return {"a": (lay, torch.full((32, 4), gain_a)), "b": (lay, torch.full((32, 4), gain_b))}, lay


def test_allocation_stays_within_the_exact_budget_and_favours_the_sensitive_layer():
    layers, lay = _two_layers(10.0, 1.0)
    weights = 2 * 32 * 128
    for budget in (2.95, 3.1, 3.5):  # plain 2-bit is 2.875 here (128-wide rows)
        k = allocate_high_groups(layers, budget)
        used = sum(layout_bits(lay, k[name]) for name in k)
        assert used <= budget * weights
        # one more group per tile in either layer would break the budget (greedy fills it)
        assert all(
            used - layout_bits(lay, k[n]) + layout_bits(lay, k[n] + 1) > budget * weights
            for n in k
            if k[n] < lay.groups_per_tile
        )
        assert k["a"] >= k["b"]
    assert allocate_high_groups(layers, 3.0)["b"] == 0 < allocate_high_groups(layers, 3.0)["a"]


def test_a_budget_below_plain_two_bit_leaves_every_layer_at_two_bits():
    layers, _ = _two_layers(1.0, 1.0)
    assert allocate_high_groups(layers, 2.0) == {"a": 0, "b": 0}


def test_fisher_diagonal_is_the_mean_squared_gradient_per_window():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32)).eval()
    batches = [torch.randint(0, 64, (1, 16), generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    name = next(iter(target_linears(model)))
    fisher = fisher_diagonal(model, batches, [name])[name]
    weight = dict(model.named_modules())[name].weight
    expected = torch.zeros_like(weight)
    for ids in batches:
        logits = model(ids, use_cache=False)[0]
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
        expected += torch.autograd.grad(loss, weight)[0] ** 2
    torch.testing.assert_close(fisher, expected / 2)
    assert not any(p.requires_grad and p.grad is not None for p in model.parameters())  # nothing left behind


def test_budgeted_model_is_within_budget_and_each_tile_holds_its_top_gain_groups():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=128)).eval()
    original = {n: m.weight.detach().clone() for n, m in target_linears(model).items()}
    ids = [torch.randint(0, 64, (1, 16), generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    stats = calibrate(model, ids, list(target_linears(model)), hessian=False, fisher=True)
    spec = QuantSpec(group_size=32, score="fisher", bit_budget=2.9)
    layouts = quantize_model(model, spec, stats, mode="naive")
    bits = model_bits(model)
    assert bits["bits_per_weight"] <= 2.9
    assert len({lay.high_per_tile for lay in layouts.values()}) > 1  # the counts differ between layers
    modules = dict(model.named_modules())
    for name, lay in layouts.items():
        layer = modules[name]
        assert isinstance(layer, QuantLinear)
        _, _, _, high = unpack_layer(lay, layer.packed_tensors())
        gains = fisher_gains(original[name], stats[name]["fisher"], spec)
        for t in range(lay.n_tiles):
            rows = slice(t * lay.tile_rows, (t + 1) * lay.tile_rows)
            tile_high, tile_gain = high[rows].flatten(), gains[rows].flatten()
            assert int(tile_high.sum()) == lay.high_per_tile  # alignment: the same count in every tile
            if 0 < lay.high_per_tile < lay.groups_per_tile:
                assert tile_gain[tile_high].min() >= tile_gain[~tile_high].max()


def test_budget_needs_the_fisher_score_and_the_fisher_statistics():
    with pytest.raises(ValueError, match="bit_budget"):
        QuantSpec(score="range", bit_budget=2.9)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=64))
    with pytest.raises(ValueError, match="Fisher"):
        quantize_model(model, QuantSpec(group_size=32, score="fisher", bit_budget=2.9), calibration=None)
    with pytest.raises(ValueError, match="calibration gradients"):
        quantize_weight(llm_like_weight(), QuantSpec(score="fisher"))


def test_high_per_tile_override_is_bounded():
    with pytest.raises(ValueError, match="high_per_tile"):
        layout_for((32, 128), QuantSpec(group_size=32), high_per_tile=65)
    assert not layout_for((32, 128), QuantSpec(group_size=32), high_per_tile=64).has_map  # all 4-bit: no map
