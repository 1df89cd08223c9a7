"""The bounds and round models the decoding benchmark reports, checked against the decoding engine."""
from __future__ import annotations

import pytest
import torch

from components.decoding.bench import (StepCosts, alpha_needed, best_over_gamma, expected_tokens, leviathan_speedup,
                                       pearl_tokens_per_s, sd_tokens_per_s)
from components.decoding.cache import CausalLM
from components.decoding.engine import build_decoder


def test_leviathan_formula():
    assert expected_tokens(0.0, 4) == 1.0 and expected_tokens(1.0, 4) == 5
    assert leviathan_speedup(0.8, 4, 0.1) == pytest.approx((1 - 0.8 ** 5) / 0.2 / 1.4)
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
    assert tokens == truth[1:n + 1].tolist()  # greedy: the target's text, whatever the draft says
    unit_rounds = StepCosts(target_blocks={1: 1.0}, draft_step=1 / gamma)  # every round lasts 1 s
    assert stats.new_tokens / stats.rounds == pytest.approx(pearl_tokens_per_s(measured_alpha, gamma, unit_rounds),
                                                            rel=0.03)

    sd = build_decoder("sd", target, draft, gamma=gamma, parallel=False)
    _, stats = sd.generate([1], n)
    unit_cycle = StepCosts(target_blocks={1: 1.0}, draft_step=0.0)  # draft free, verify 1 s
    assert stats.new_tokens / stats.target_forwards == pytest.approx(
        sd_tokens_per_s(measured_alpha, gamma, unit_cycle), rel=0.03)
