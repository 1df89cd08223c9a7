"""Elo ratings and the tournament's pairing rules.

Elo (as in the paper and its reproductions): a new hypothesis starts at 1200; the expected score of
A against B is E_A = 1 / (1 + 10^((R_B - R_A) / 400)); after a match R'_A = R_A + K (S_A - E_A).

Pairing (paper: new and top-ranked hypotheses are prioritised; the proximity graph makes similar
hypotheses meet; top-ranked pairs get multi-turn debates, the rest single-turn comparisons):
  1. the first player is drawn with weight  w_new / (1 + matches)  +  w_top * [in the top k];
  2. its opponent is drawn with weight  w_sim * similarity  +  w_close * closeness in Elo,
     divided by (1 + times the pair already met), so repeated pairs are rarer;
  3. the match is a debate when both players are in the top k by Elo and both have played at
     least `debate_min_matches`, else a single-turn comparison.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from components.checks import at_least, positive


@dataclass
class EloConfig:
    initial: float = 1200.0  # the paper's starting rating for every new hypothesis
    k_factor: float = 32.0  # reproductions use K = 24-32; larger moves faster, noisier
    k_min: float = 8.0  # K shrinks from k_factor towards this as a hypothesis plays (FIDE-style
    #                    provisional ratings: fast to place, stable once placed); = k_factor: plain fixed-K Elo
    k_halving_matches: float = 4.0  # matches after which K has come halfway down to k_min
    # The four settings below were chosen on the benchmark's TUNING seeds only (benchmarks/coscientist.py,
    # schedule_candidates); the tau it reports is measured on disjoint held-out seeds.
    top_k: int = 2  # "top-ranked": the top pair's contest is debated; 4 spent half the ranking calls on debates
    debate_min_matches: int = 8  # "top" means something only once ratings are established (after 2, mostly chance)
    debate_turns: int = 2  # argument turns before the judge's verdict (one LLM call each); keep it even so
    #                        both advocates speak equally often (an odd count gives hypothesis 1 the last word)
    w_new: float = 3.0  # first-player weight for having played few matches (new first)
    w_top: float = 0.3  # first-player weight for being in the top k: prioritised, yet with 1.0 the top drew
    #                     ~2.4x the matches of the bottom, which then stayed mis-ordered
    w_similar: float = 2.0  # opponent weight for proximity (cosine similarity in [0, 1])
    w_close: float = 1.0  # opponent weight for Elo closeness (informative matches)

    def __post_init__(self) -> None:
        at_least("elo.k_min", self.k_min, 0)
        at_least("elo.k_factor", self.k_factor, self.k_min)
        positive("elo.k_halving_matches", self.k_halving_matches)
        at_least("elo.top_k", self.top_k, 0)  # 0: no top pair, so no debates
        at_least("elo.debate_min_matches", self.debate_min_matches, 0)
        at_least("elo.debate_turns", self.debate_turns, 1)
        for key in ("w_new", "w_top", "w_similar", "w_close"):
            at_least(f"elo.{key}", getattr(self, key), 0)


def expected_score(r_a: float, r_b: float) -> float:
    """Probability that A beats B under Elo."""
    return 1.0 / (1.0 + 10.0 ** ((r_b - r_a) / 400.0))


def update_elo(r_a: float, r_b: float, score_a: float, k: float, k_b: float | None = None) -> tuple[float, float]:
    """New (R_A, R_B) after a match that A scored `score_a` in (1 win, 0 loss, 0.5 draw).

    `k_b` (default `k`) lets each side move by its own K, as with provisional ratings."""
    if not 0.0 <= score_a <= 1.0:
        raise ValueError(f"score_a must be in [0, 1], got {score_a}")
    e_a = expected_score(r_a, r_b)
    return r_a + k * (score_a - e_a), r_b - (k if k_b is None else k_b) * (score_a - e_a)


def k_for(matches: int, cfg: EloConfig) -> float:
    """K of a hypothesis that has played `matches`: k_factor when new, approaching k_min."""
    if matches < 0:
        raise ValueError(f"matches must be >= 0, got {matches}")
    return cfg.k_min + (cfg.k_factor - cfg.k_min) / (1.0 + matches / cfg.k_halving_matches)


@dataclass(frozen=True)
class Player:
    id: str
    elo: float
    matches: int


@dataclass(frozen=True)
class Pairing:
    a: str
    b: str
    debate: bool


def top_ids(players: Sequence[Player], k: int) -> set[str]:
    ranked = sorted(players, key=lambda p: (-p.elo, p.id))
    return {p.id for p in ranked[:k]}


def _weighted_choice(rng: random.Random, items: Sequence, weights: Sequence[float]):
    total = sum(weights)
    if total <= 0:
        return items[rng.randrange(len(items))]
    return rng.choices(items, weights=weights, k=1)[0]


def choose_pair(
    players: Sequence[Player],
    cfg: EloConfig,
    rng: random.Random,
    similarity: Mapping[tuple[str, str], float] | None = None,
    met: Mapping[tuple[str, str], int] | None = None,
    busy_pairs: set[tuple[str, str]] = frozenset(),
) -> Pairing | None:
    """Pick the next match, or None when fewer than two players (or every pair is in flight)."""
    if len(players) < 2:
        return None
    similarity = similarity or {}
    met = met or {}
    top = top_ids(players, cfg.top_k)
    first_weights = [cfg.w_new / (1.0 + p.matches) + (cfg.w_top if p.id in top else 0.0) for p in players]
    order = list(players)
    # Draw first players until one has a free opponent (pairs already in flight are skipped).
    for _ in range(len(players)):
        a = _weighted_choice(rng, order, first_weights)
        opponents = [p for p in players if p.id != a.id and pair_key(a.id, p.id) not in busy_pairs]
        if opponents:
            break
        i = order.index(a)
        order.pop(i)
        first_weights.pop(i)
        if not order:
            return None
    else:
        return None
    weights = []
    for p in opponents:
        key = pair_key(a.id, p.id)
        sim = max(0.0, similarity.get(key, 0.0))
        closeness = math.exp(-abs(a.elo - p.elo) / 200.0)
        weights.append((cfg.w_similar * sim + cfg.w_close * closeness + 1e-3) / (1.0 + met.get(key, 0)))
    b = _weighted_choice(rng, opponents, weights)
    debate = a.id in top and b.id in top and min(a.matches, b.matches) >= cfg.debate_min_matches
    return Pairing(a.id, b.id, debate)


def pair_key(x: str, y: str) -> tuple[str, str]:
    return (x, y) if x <= y else (y, x)
