"""The bounds and round models the decoding benchmark reports, checked against the decoding engine."""

from __future__ import annotations

import pytest
import torch

from components.decoding.bench import greedy_agreement
from components.decoding.cache import CausalLM, SequenceRunner, wrap_model
from components.decoding.engine import build_decoder
from components.decoding.models import layer_skip_draft, tiny_llama
from components.decoding.roundmodel import (
    StepCosts,
    alpha_needed,
    alpha_needed_at_cost,
    best_over_gamma,
    expected_tokens,
    leviathan_speedup,
    pearl_tokens_per_s,
    requirement_map,
    scaled_draft,
    sd_tokens_per_s,
    step_costs,
)
from components.decoding.summary import draft_shortfall


def test_leviathan_formula():
    assert expected_tokens(0.0, 4) == 1.0 and expected_tokens(1.0, 4) == 5
    assert leviathan_speedup(0.8, 4, 0.1) == pytest.approx((1 - 0.8**5) / 0.2 / 1.4)
    assert leviathan_speedup(0.0, 3, 0.5) < 1  # a useless draft only costs time


def test_sd_model_is_leviathan_when_a_verify_costs_one_step():
    flat = StepCosts(target_blocks={1: 1.0}, draft_step=0.2)
    for alpha, gamma in ((0.3, 2), (0.8, 5), (1.0, 3)):
        assert sd_tokens_per_s(alpha, gamma, flat) == pytest.approx(leviathan_speedup(alpha, gamma, 0.2))
    # a verify that costs more than a step lowers it
    cpu_like = StepCosts(target_blocks={1: 1.0, 9: 2.0}, draft_step=0.2)
    assert sd_tokens_per_s(0.8, 4, cpu_like) < leviathan_speedup(0.8, 4, 0.2)


def test_block_costs_interpolate_and_extend():
    costs = StepCosts(target_blocks={1: 1.0, 3: 2.0, 5: 2.5}, draft_step=0.1)
    assert [costs.target(k) for k in (1, 2, 3, 4, 5)] == pytest.approx([1.0, 1.5, 2.0, 2.25, 2.5])
    assert costs.target(7) == pytest.approx(3.0)  # the last slope, extended


def test_pearl_model_limits():
    costs = StepCosts(target_blocks={1: 1.0, 9: 2.0}, draft_step=0.1)
    # a draft that is always wrong: one token per pre-verify round, as long as the slower worker
    assert pearl_tokens_per_s(0.0, 8, costs) == pytest.approx(1 / max(0.8, 1.0))
    assert pearl_tokens_per_s(0.0, 12, costs) == pytest.approx(1 / 1.2)
    # a draft that is never wrong: post-verify rounds of γ tokens forever
    assert pearl_tokens_per_s(1.0, 8, costs) == pytest.approx(8 / costs.target(8))
    assert pearl_tokens_per_s(0.9, 1, costs) == pytest.approx(1.0)  # γ = 1 leaves nothing to post-verify
    # where a block costs one step (a GPU), a better draft never makes it slower; where an 8-token
    # block costs ~2 steps (2 CPU cores), a weak draft's post-verify rounds cost more than they yield
    gpu_like = StepCosts(target_blocks={1: 1.0}, draft_step=0.1)
    rates = [pearl_tokens_per_s(a / 10, 8, gpu_like) for a in range(11)]
    assert rates == sorted(rates)
    assert pearl_tokens_per_s(0.2, 8, costs) < pearl_tokens_per_s(0.0, 8, costs)
    rate, gamma = best_over_gamma(pearl_tokens_per_s, 0.7, costs)
    assert rate >= pearl_tokens_per_s(0.7, 8, costs) and 1 <= gamma <= 16


def test_alpha_needed_is_monotone_in_the_goal():
    costs = StepCosts(target_blocks={1: 1.0, 9: 1.5, 17: 2.0}, draft_step=0.1)

    def pearl(a):
        return best_over_gamma(pearl_tokens_per_s, a, costs)[0]

    needed = [alpha_needed(goal, pearl) for goal in (1.0, 1.5, 2.0, 3.0)]
    assert needed == sorted(needed) and needed[0] == 0.0
    assert pearl(needed[2]) >= 2.0 > pearl(needed[2] - 0.01)
    assert alpha_needed(100.0, pearl) == 1.0  # unreachable


class _PositionOracle(CausalLM):
    """A model whose next-token guess depends only on the position: the target always predicts the
    text `truth`; the draft predicts it where `right[n]` holds, else another token. So every draft
    token is accepted independently with probability mean(right): the round model's assumption."""

    vocab_size = 32

    def __init__(self, truth: torch.Tensor, right: torch.Tensor):
        self.truth, self.right = truth, right

    def forward(self, ids, cache):
        start = cache or 0
        positions = torch.arange(start + 1, start + ids.shape[1] + 1)  # the token each row predicts
        guess = torch.where(self.right[positions], self.truth[positions], (self.truth[positions] + 1) % self.vocab_size)
        logits = torch.full((1, ids.shape[1], self.vocab_size), -10.0)
        logits[0, torch.arange(ids.shape[1]), guess] = 10.0
        return logits, start + ids.shape[1]

    def crop(self, cache, length):
        return min(cache or 0, length)

    @staticmethod
    def cache_length(cache):
        return cache or 0


@pytest.mark.parametrize("alpha, gamma", [(0.3, 8), (0.6, 4), (0.85, 6)])
def test_round_models_count_the_engines_tokens_per_round(alpha, gamma):
    """With unit-cost rounds the models' tokens/s are tokens per round: the engine must agree."""
    n = 6000
    gen = torch.Generator().manual_seed(int(alpha * 100) + gamma)
    truth = torch.randint(0, 32, (n + 64,), generator=gen)
    right = torch.rand(n + 64, generator=gen) < alpha
    target, draft = _PositionOracle(truth, torch.ones_like(right)), _PositionOracle(truth, right)
    measured_alpha = right.float().mean().item()

    pearl = build_decoder("pearl", target, draft, gamma=gamma, parallel=False)
    tokens, stats = pearl.generate([1], n)
    assert tokens == truth[1 : n + 1].tolist()  # greedy: the target's text, whatever the draft says
    unit_rounds = StepCosts(target_blocks={1: 1.0}, draft_step=1 / gamma)  # every round lasts 1 s
    assert stats.new_tokens / stats.rounds == pytest.approx(
        pearl_tokens_per_s(measured_alpha, gamma, unit_rounds), rel=0.03
    )

    sd = build_decoder("sd", target, draft, gamma=gamma, parallel=False)
    _, stats = sd.generate([1], n)
    unit_cycle = StepCosts(target_blocks={1: 1.0}, draft_step=0.0)  # draft free, verify 1 s
    assert stats.new_tokens / stats.target_forwards == pytest.approx(
        sd_tokens_per_s(measured_alpha, gamma, unit_cycle), rel=0.03
    )


def test_greedy_agreement_is_the_share_of_positions_the_draft_predicts():
    gen = torch.Generator().manual_seed(3)
    truth = torch.randint(0, 32, (300,), generator=gen)
    right = torch.rand(300, generator=gen) < 0.4
    target, draft = _PositionOracle(truth, torch.ones_like(right)), _PositionOracle(truth, right)
    prompt = truth[:5].tolist()
    generated, _ = build_decoder("ar", target).generate(prompt, 200)
    assert generated == truth[5:205].tolist()
    assert greedy_agreement(target, [(prompt, generated)]) == 1.0
    assert greedy_agreement(draft, [(prompt, generated)]) == pytest.approx(right[5:205].float().mean().item())


def test_greedy_agreement_on_a_real_model_matches_step_by_step_decoding():
    """One teacher-forced forward per sequence gives the same argmaxes as feeding the target's
    tokens one at a time through the draft's KV cache (the way SD proposes)."""
    target = tiny_llama(vocab_size=64, hidden=32, layers=3, dtype=torch.float64)
    draft = layer_skip_draft(target, 1)
    ar = build_decoder("ar", target)
    sequences = [(p, ar.generate(p, 30)[0]) for p in ([1, 5, 9], [2, 7], [3, 3, 3, 4])]
    assert greedy_agreement(target, sequences) == 1.0
    hits = total = 0
    for prompt, generated in sequences:
        runner, seq = SequenceRunner(wrap_model(draft)), list(prompt)
        for token in generated:
            hits += int(runner.logits_for(seq)[-1].argmax()) == token
            total += 1
            seq.append(token)
    assert 0 < hits < total  # a draft that is right only part of the time
    assert greedy_agreement(draft, sequences) == pytest.approx(hits / total)


_CPU_COSTS = {
    "target_step_s": 0.05,
    "target_step_split_s": 0.051,
    "target_block_s": {"3": 0.06, "9": 0.085, "17": 0.09},
    "target_block_split_s": {"3": 0.058, "9": 0.114, "17": 0.113},
    "draft_step_s": 0.006,
    "draft_step_split_s": 0.004,
}


def test_alpha_needed_at_cost_is_the_least_alpha_meeting_the_goals():
    for gpu_like in (False, True):
        needed = alpha_needed_at_cost(_CPU_COSTS, 0.2, 2.0, 1.3, gpu_like=gpu_like)
        assert needed["both"] is not None
        assert needed["both"] >= max(needed["pearl_vs_ar"], needed["pearl_vs_sd"])
    # unreachable goals are None, not 1.0 (a perfect draft of cost 0.5 cannot give 20x)
    assert alpha_needed_at_cost(_CPU_COSTS, 0.5, 20.0, 1.0)["pearl_vs_ar"] is None
    # a weak goal is met by any draft
    assert alpha_needed_at_cost(_CPU_COSTS, 0.05, 0.5, 0.1) == {"pearl_vs_ar": 0.0, "pearl_vs_sd": 0.0, "both": 0.0}


def test_alpha_needed_at_cost_checks_against_the_round_models():
    """At the returned α PEARL meets 2x AR with this draft cost; 0.01 less does not."""
    c = 0.1
    split, full = scaled_draft(step_costs(_CPU_COSTS, True), c), scaled_draft(step_costs(_CPU_COSTS, False), c)
    alpha = alpha_needed_at_cost(_CPU_COSTS, c, 2.0, 1.0)["pearl_vs_ar"]
    ar = 1 / full.target(1)
    assert best_over_gamma(pearl_tokens_per_s, alpha, split)[0] / ar >= 2.0
    assert best_over_gamma(pearl_tokens_per_s, alpha - 0.01, split)[0] / ar < 2.0


def test_requirement_map_reports_the_least_alpha_over_costs():
    result = requirement_map(_CPU_COSTS, 2.0, 1.3)
    for regime in ("measured", "gpu_like"):
        reachable = [(p[regime]["both"], p["c"]) for p in result["curve"] if p[regime]["both"] is not None]
        assert reachable, regime
        assert (result[f"least_alpha_both_{regime}"], result[f"c_at_least_alpha_both_{regime}"]) == min(reachable)
    # flat verify blocks and a whole device per worker make the goals easier than this CPU's costs,
    # but a draft that is almost free leaves PEARL nothing to hide from SD in either regime
    assert result["least_alpha_both_gpu_like"] < result["least_alpha_both_measured"]
    cheapest = result["curve"][0]
    assert cheapest["c"] == 0.01 and cheapest["measured"]["pearl_vs_sd"] is None is cheapest["gpu_like"]["pearl_vs_sd"]


def _result(pearl_rate: float, alpha: float, c: float) -> dict:
    costs = {**_CPU_COSTS, "c": c}
    return {
        "costs": costs,
        "methods": {"ar": {"tokens_per_s": 10.0}, "pearl": {"tokens_per_s": pearl_rate, "acceptance_rate": alpha}},
    }


def test_draft_shortfall_says_what_the_draft_would_need():
    short = draft_shortfall(_result(8.0, 0.3, 0.1), 2.0, 1.3)
    need = alpha_needed_at_cost(_CPU_COSTS, 0.1, 2.0, 1.3)["pearl_vs_ar"]
    assert short["alpha_needed_pearl_vs_ar_at_draft_cost"] == need and need > 0.3
    assert f"alpha>={need:.2f}" in short["why"] and "0.80x AR" in short["why"]
    hopeless = draft_shortfall(_result(8.0, 0.3, 0.5), 20.0, 1.0)  # 20x: no draft of this cost gets there
    assert hopeless["alpha_needed_pearl_vs_ar_at_draft_cost"] is None and "never wrong reaches only" in hopeless["why"]
    assert "9 tokens costs 1.70x" in hopeless["why"]  # 0.085 s / 0.05 s, from the costs given
    met = draft_shortfall(_result(25.0, 0.9, 0.1), 2.0, 1.3)
    assert met["why"].startswith("PEARL runs 2.50x AR")
