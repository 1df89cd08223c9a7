"""Whole-model bit budgets (head included), the alignment rule at every budget, the default-budget rule."""

import copy
import dataclasses
import math

import pytest
import torch

from components.checks import ConfigError
from components.lm.model import GPT, GPTConfig
from components.quant import QuantLinear, QuantSpec, reference_dequantize
from components.quant.budget import (
    apply_head_bits,
    budget_range,
    default_budget,
    head_layout,
    plan_budget,
    whole_model_bits,
)
from components.quant.evaluation import bootstrap_ppl_ci, bootstrap_ratio_ci
from components.quant.linear import unpack_layer
from components.quant.model import calibrate, quantizable_linears, quantize_model, target_linears
from components.quant.quantizer import bits_breakdown, fake_quantize_uniform, group_scores, quantize_weight
from mlsys.flow import compose

RANGE = QuantSpec(name="mixed_range", group_size=32, score="range", frac_high=0.125)
FISHER = QuantSpec(name="mixed", group_size=32, score="fisher", bit_budget=2.9)
RANDOM = QuantSpec(name="mixed_random", group_size=32, score="random", frac_high=0.125, seed=3)


@pytest.fixture(scope="module")
def small_gpt():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=1024, block_size=32, n_layer=2, n_head=2, n_embd=128)).eval()
    with torch.no_grad():  # heavier-tailed weights than the init, so ranges differ between groups
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(1 + 3 * torch.rand_like(p) ** 4)
    return model


@pytest.fixture(scope="module")
def stats(small_gpt):
    batches = [torch.randint(0, 1024, (1, 32), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    return calibrate(
        small_gpt, batches, list(target_linears(small_gpt, include_lm_head=True)), hessian=False, fisher=True
    )


def _quantized(model, spec, stats, budget):
    layers = quantizable_linears(model, spec)
    fisher = {name: stats[name]["fisher"] for name in layers}
    planned = plan_budget(model, layers, spec, budget, fisher, stats["lm_head"]["fisher"])

    qmodel = copy.deepcopy(model)
    quantize_model(qmodel, planned, stats)
    head = apply_head_bits(qmodel, planned, stats.get("lm_head"))
    return qmodel, planned, head


@pytest.mark.parametrize("spec", [RANGE, FISHER, RANDOM], ids=lambda s: s.score)
@pytest.mark.parametrize("budget", [3.17, 3.61, 4.33])
def test_odd_budgets_are_honoured_over_every_weight(small_gpt, stats, spec, budget):
    least, most = budget_range(small_gpt, quantizable_linears(small_gpt, spec), spec)
    assert least < budget < most
    qmodel, planned, head = _quantized(small_gpt, spec, stats, budget)
    bits = whole_model_bits(qmodel, head)
    assert planned.head_bits in (2, 4) and head is not None
    assert bits["total_weights"] == sum(p.numel() for p in small_gpt.parameters())
    # at or under the budget, and not far under it (one allocation step of this small model)
    assert budget - 0.08 < bits["bits_per_weight_all"] <= budget


@pytest.mark.parametrize("spec", [RANGE, FISHER], ids=lambda s: s.score)
@pytest.mark.parametrize("budget", [3.3, 3.9, 4.6])
def test_every_tile_keeps_the_same_four_bit_count_at_every_budget(small_gpt, stats, spec, budget):
    qmodel, planned, _ = _quantized(small_gpt, spec, stats, budget)
    layers = [m for m in qmodel.modules() if isinstance(m, QuantLinear)]
    assert layers
    original = dict(small_gpt.named_modules())
    for name, module in qmodel.named_modules():
        if not isinstance(module, QuantLinear):
            continue
        lay = module.layout
        _, _, _, high = unpack_layer(lay, module.packed_tensors())
        per_tile = high.reshape(lay.n_tiles, lay.groups_per_tile).sum(1)
        assert bool((per_tile == lay.high_per_tile).all())  # the alignment constraint
        # inside a tile the 4-bit groups are the top-scored ones (range, or the Fisher gain)
        fisher = stats[name]["fisher"] if planned.score == "fisher" else None
        scores = group_scores(original[name].weight.detach(), planned, fisher=fisher)
        scores = scores.reshape(lay.n_tiles, lay.groups_per_tile)
        flat = high.reshape(lay.n_tiles, lay.groups_per_tile)
        if 0 < lay.high_per_tile < lay.groups_per_tile:
            assert bool(
                (
                    scores[flat].reshape(lay.n_tiles, -1).min(1).values
                    >= scores[~flat].reshape(lay.n_tiles, -1).max(1).values
                ).all()
            )


def test_head_bits_are_counted_exactly(small_gpt):
    vocab, width = small_gpt.lm_head.weight.shape
    plain = whole_model_bits(small_gpt)
    assert plain["bits_per_weight_all"] == 32.0
    for head_bits in (2, 4):
        layout = head_layout(small_gpt, RANGE, head_bits)
        by_hand = vocab * width * head_bits + vocab * (width // 32) * (8 + 8) + vocab * (16 + 32)
        assert sum(bits_breakdown(layout).values()) == by_hand
        counted = whole_model_bits(small_gpt, layout)
        assert counted["total_bits"] == plain["total_bits"] - 32 * vocab * width + by_hand
        assert counted["total_weights"] == plain["total_weights"]


def test_head_quantization_writes_the_dequantized_tied_weight(small_gpt):
    model = copy.deepcopy(small_gpt)
    spec = dataclasses.replace(RANGE, head_bits=4)
    original = model.lm_head.weight.detach().clone()
    packed = apply_head_bits(model, spec)
    expected = reference_dequantize(packed.layout, packed.tensors)
    assert model.wte.weight is model.lm_head.weight  # still tied
    torch.testing.assert_close(model.wte.weight.detach(), expected, rtol=0, atol=0)
    assert 0 < float((expected - original).abs().max()) < float(original.abs().max()) / 4
    assert apply_head_bits(model, dataclasses.replace(RANGE, head_bits=None)) is None


def test_budget_outside_what_the_model_can_store_is_named(small_gpt, stats):
    layers = quantizable_linears(small_gpt, RANGE)
    least, _ = budget_range(small_gpt, layers, RANGE)
    with pytest.raises(ValueError, match=r"budget=2.1 bits/weight is below the least"):
        plan_budget(small_gpt, layers, RANGE, 2.1)
    with pytest.raises(ValueError, match="Fisher diagonal"):
        plan_budget(small_gpt, layers, FISHER, least + 0.5)
    assert plan_budget(small_gpt, layers, RANGE, 7.0).frac_high == 1.0  # above all-4-bit: all 4-bit, head 4


def test_fake_uniform_quantization_is_the_packed_one_at_packed_widths_and_any_width_between():
    w = torch.randn(48, 96, generator=torch.Generator().manual_seed(5)) * torch.rand(48, 96) ** 3
    for bits, frac in ((2, 0.0), (4, 1.0)):
        spec = dataclasses.replace(RANGE, frac_high=frac)
        packed = quantize_weight(w, spec)
        deq, layout = fake_quantize_uniform(w, bits, spec)
        torch.testing.assert_close(deq, reference_dequantize(packed.layout, packed.tensors), rtol=0, atol=0)
        assert sum(bits_breakdown(layout).values()) == sum(packed.bits().values())
    errors = [float((fake_quantize_uniform(w, b, RANGE)[0] - w).pow(2).mean()) for b in (2, 3, 4)]
    assert errors[0] > errors[1] > errors[2]


def test_default_budget_is_the_least_bits_within_tolerance():
    frontier = [
        {"bits_per_weight": 2.8, "perplexity": 40.0},
        {"bits_per_weight": 3.3, "perplexity": 10.9},
        {"bits_per_weight": 3.6, "perplexity": 11.2},  # noisy: worse than the 3.3 point
        {"bits_per_weight": 4.2, "perplexity": 10.2},
        {"bits_per_weight": 4.5, "perplexity": 10.0},
    ]
    assert default_budget(frontier, 10.0)["bits_per_weight"] == 3.3
    assert default_budget(frontier, 10.0, tolerance=0.05)["bits_per_weight"] == 4.2
    assert default_budget(list(reversed(frontier)), 10.0)["bits_per_weight"] == 3.3  # order does not matter
    nan_point = [{"bits_per_weight": 2.6, "perplexity": math.nan}] + frontier
    assert default_budget(nan_point, 10.0)["bits_per_weight"] == 3.3
    with pytest.raises(ValueError, match="no frontier point is within 10%"):
        default_budget(frontier[:1], 10.0)
    with pytest.raises(ValueError, match="reference perplexity"):
        default_budget(frontier, 0.0)


def test_bootstrap_intervals_cover_the_point_and_are_paired():
    nll = [300.0, 280.0, 350.0, 310.0, 295.0]
    tokens = [100] * 5
    lo, hi = bootstrap_ppl_ci(nll, tokens)
    assert lo < math.exp(sum(nll) / 500) < hi
    assert bootstrap_ratio_ci(nll, nll, tokens) == (1.0, 1.0)
    shifted = [x + 5.0 for x in nll]  # worse on every window by the same amount: a tight paired interval
    lo, hi = bootstrap_ratio_ci(shifted, nll, tokens)
    assert lo == pytest.approx(math.exp(0.05)) and hi == pytest.approx(math.exp(0.05))
    with pytest.raises(ValueError, match="equal, non-empty"):
        bootstrap_ratio_ci(nll, nll[:2], tokens)


@pytest.mark.parametrize(
    "override, key",
    [
        (["quant.budget=1.5"], "quant.budget"),
        (["quant.budget=9"], "quant.budget"),
        (["quant.budget=3.2", "layers=layers"], "quant.budget"),
        (["quant_method.head_bits=3"], "head_bits"),
        (["forward_mode=fast"], "forward_mode"),
        (["quant.budget=null", "layers='x['"], "not a regular expression"),
    ],
)
def test_config_errors_name_the_key(flow_overrides, override, key):
    with pytest.raises(ConfigError, match=key):
        compose("quantize", flow_overrides + override)


def test_bad_head_bits_in_a_spec_is_named():
    with pytest.raises(ValueError, match="head_bits"):
        QuantSpec(head_bits=3)
