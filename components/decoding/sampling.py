"""Token sampling and the lossless speculative accept/reject rule.

Every method (autoregressive, vanilla SD, PEARL) turns logits into a distribution with the same
`warp` (temperature, top-p), so "lossless" means: the tokens speculative decoding emits are
distributed exactly as tokens sampled autoregressively from the *warped* target distribution.
Greedy decoding (temperature 0) is the one-hot argmax distribution, which makes the same accept
rule reduce to "accept iff the draft's argmax equals the target's".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0: greedy (argmax), deterministic and what the papers measure
    top_p: float = 1.0  # nucleus: keep the smallest set of tokens whose mass reaches top_p

    def __post_init__(self) -> None:
        if not (0.0 <= self.temperature <= 100.0):
            raise ValueError(f"temperature must be in [0, 100], got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def warp(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Logits [..., V] -> probabilities [..., V] (float64, so p/q ratios are not rounded away)."""
    logits = logits.to(torch.float64)
    if params.greedy:
        return torch.nn.functional.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(torch.float64)
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= params.top_p, 0.0)  # the top token always stays
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def sample(probs: torch.Tensor, generator: Optional[torch.Generator]) -> int:
    """One token id from a 1-D distribution (argmax when the distribution is one-hot)."""
    if probs.max() >= 1.0:
        return int(probs.argmax())
    return int(torch.multinomial(probs, 1, generator=generator))


def uniform(generator: Optional[torch.Generator]) -> float:
    return float(torch.rand((), generator=generator, dtype=torch.float64))


def accept_draft_token(token: int, p: torch.Tensor, q: torch.Tensor, generator: Optional[torch.Generator]) -> bool:
    """Leviathan/Chen rule: accept the draft's `token` (drawn from q) with probability min(1, p/q)."""
    p_tok, q_tok = float(p[token]), float(q[token])
    if p_tok >= q_tok:
        return True  # r <= 1 <= p/q always: no random draw needed (also the greedy accept path)
    return uniform(generator) * q_tok <= p_tok  # r <= p/q without dividing by a tiny q


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(p - q, 0)): what a rejected position is resampled from, so the output follows p."""
    diff = torch.clamp(p - q, min=0.0)
    total = diff.sum()
    if total <= 0:  # p == q up to rounding: a rejection had ~zero probability; p is then exact
        return p
    return diff / total
