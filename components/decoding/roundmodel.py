"""Round models of speculative decoding: expected tokens/s of vanilla SD and PEARL at a given
acceptance α and measured per-forward costs, and the α a draft of a given cost needs for a goal.

Pure arithmetic (no timing, no models): benchmarks/decoding.py and the `decode_bench` flow price the
rounds with the costs `timing.measure_costs` measured, and draw the α map from `requirement_map`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional


def expected_tokens(alpha: float, gamma: int) -> float:
    """Tokens per verification round with γ drafts accepted i.i.d. with probability α."""
    return gamma + 1 if alpha >= 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)


def leviathan_speedup(alpha: float, gamma: int, c: float) -> float:
    """Expected SD speedup over AR (Leviathan et al.): (1 − α^{γ+1}) / ((1 − α)(γc + 1)), c = t_draft/t_target."""
    return expected_tokens(alpha, gamma) / (gamma * c + 1)


@dataclass(frozen=True)
class StepCosts:
    """Measured seconds per forward on one thread budget: the inputs of the round models.

    `target_blocks[k]` is a target forward over k new tokens (k = 1 is the decode step); on a GPU it
    stays near the step up to tens of tokens, on 2 CPU cores a 9-token block costs 1.5-2x a step.
    """

    target_blocks: dict[int, float]
    draft_step: float

    def target(self, block: int) -> float:
        """Seconds of a target forward over `block` tokens, linear between the measured sizes."""
        sizes = sorted(self.target_blocks)
        if block <= sizes[0] or len(sizes) == 1:
            return self.target_blocks[sizes[0]]
        for lo, hi in zip(sizes, sizes[1:]):
            if block <= hi:
                w = (block - lo) / (hi - lo)
                return (1 - w) * self.target_blocks[lo] + w * self.target_blocks[hi]
        lo, hi = sizes[-2], sizes[-1]  # past the largest size: extend the last slope
        return self.target_blocks[hi] + (block - hi) * (self.target_blocks[hi] - self.target_blocks[lo]) / (hi - lo)


def sd_tokens_per_s(alpha: float, gamma: int, costs: StepCosts) -> float:
    """Vanilla SD with measured costs: the draft makes γ steps, then the target verifies γ + 1 tokens
    (the last emitted token + the block). Leviathan's formula with the verify priced as measured."""
    return expected_tokens(alpha, gamma) / (gamma * costs.draft_step + costs.target(gamma + 1))


def pearl_tokens_per_s(alpha: float, gamma: int, costs: StepCosts) -> float:
    """PEARL with measured costs, as `SpeculativeDecoder` runs it, acceptance i.i.d. with probability α.

    Two kinds of round, each as long as the slower worker (perfect overlap: no barrier cost, no
    contention for the memory bus between the workers, so real rounds are slower):
    - pre-verify (no block pending): the draft makes γ steps while the target takes one step, which
      verifies the first draft token. One token either way; accepted (α) -> post-verify.
    - post-verify: the target verifies the γ − 1 pending tokens (+ the one before them: γ tokens)
      while the draft makes the next γ steps. The i-th pending token rejected first: i + 1 tokens,
      back to pre-verify. All accepted: γ − 1 tokens, and the target's last p verifies the first new
      draft token: accepted -> γ tokens and post-verify again (probability α^γ), else γ tokens and
      pre-verify.
    Stationary rounds: post/pre = α / (1 − α^γ).
    """
    pre_s = max(gamma * costs.draft_step, costs.target(1))
    if gamma == 1:  # the pre-verified token was the whole draft: no block is left to post-verify
        return 1 / pre_s
    if alpha >= 1:
        return gamma / max(gamma * costs.draft_step, costs.target(gamma))
    post_s = max(gamma * costs.draft_step, costs.target(gamma))
    post_tokens = sum(alpha**i * (1 - alpha) * (i + 1) for i in range(gamma - 1)) + alpha ** (gamma - 1) * gamma
    post_per_pre = alpha / (1 - alpha**gamma)
    return (1 + post_per_pre * post_tokens) / (pre_s + post_per_pre * post_s)


def best_over_gamma(
    rate: Callable[[float, int, StepCosts], float], alpha: float, costs: StepCosts, max_gamma: int = 16
) -> tuple[float, int]:
    """(tokens/s, γ) of the best draft length for `rate` at this α."""
    return max((rate(alpha, g, costs), g) for g in range(1, max_gamma + 1))


def best_speedups(full: StepCosts, split: StepCosts) -> tuple[Callable[[float], float], Callable[[float], float]]:
    """(SD, PEARL) tokens/s at their best γ as functions of α, over AR's (one target step on all
    cores): SD priced with `full` (every forward on all cores), PEARL with `split` (each worker its share)."""
    ar = 1 / full.target(1)
    return (
        lambda a: best_over_gamma(sd_tokens_per_s, a, full)[0] / ar,
        lambda a: best_over_gamma(pearl_tokens_per_s, a, split)[0] / ar,
    )


def alpha_needed(
    goal: float, speedup_at: Callable[[float], float], unreachable: Optional[float] = 1.0
) -> Optional[float]:
    """Smallest α (to 0.01) at which `speedup_at(α)` reaches `goal`; `unreachable` when even α = 1 does not."""
    for step in range(0, 101):
        if speedup_at(step / 100) >= goal:
            return step / 100
    return unreachable


def scaled_draft(costs: StepCosts, c: float) -> StepCosts:
    """The same target with a hypothetical draft whose step costs `c` target steps."""
    return StepCosts(target_blocks=costs.target_blocks, draft_step=c * costs.target(1))


def alpha_needed_at_cost(
    costs: dict, c: float, goal_vs_ar: float, goal_vs_sd: float, gpu_like: bool = False
) -> dict[str, Optional[float]]:
    """The α a draft costing `c` target steps must reach for PEARL (best γ) to run `goal_vs_ar` x AR,
    `goal_vs_sd` x vanilla SD (best γ), and both; None where even a never-wrong draft does not.

    With the measured target costs (SD and AR on all cores, PEARL's workers on their share), or
    `gpu_like`: every block costs one step and each worker has a whole device (no split), the regime
    the paper measures in. Acceptance is i.i.d. at α (the round models above).
    """
    full, split = step_costs(costs, split=False), step_costs(costs, split=True)
    if gpu_like:
        full = split = StepCosts(target_blocks={1: full.target(1)}, draft_step=full.draft_step)
    sd, pearl = best_speedups(scaled_draft(full, c), scaled_draft(split, c))
    checks = {"pearl_vs_ar": lambda a: pearl(a) / goal_vs_ar, "pearl_vs_sd": lambda a: pearl(a) / sd(a) / goal_vs_sd}
    checks["both"] = lambda a: min(checks["pearl_vs_ar"](a), checks["pearl_vs_sd"](a))
    return {name: alpha_needed(1.0, check, unreachable=None) for name, check in checks.items()}


GOAL_VS_AR, GOAL_VS_SD = 2.0, 1.3  # the serve issue's targets for PEARL: the map's default goals
DRAFT_COSTS = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.8)


def requirement_map(
    costs: dict, goal_vs_ar: float, goal_vs_sd: float, draft_costs: Sequence[float] = DRAFT_COSTS
) -> dict:
    """`alpha_needed_at_cost` over a range of draft costs, at the measured costs and GPU-like, and the
    least α that meets both goals at any of these costs (None: at none)."""
    curve = [
        {
            "c": c,
            "measured": alpha_needed_at_cost(costs, c, goal_vs_ar, goal_vs_sd),
            "gpu_like": alpha_needed_at_cost(costs, c, goal_vs_ar, goal_vs_sd, gpu_like=True),
        }
        for c in draft_costs
    ]
    out: dict = {"goal_vs_ar": goal_vs_ar, "goal_vs_sd": goal_vs_sd, "curve": curve}
    for regime in ("measured", "gpu_like"):
        reachable = [(p[regime]["both"], p["c"]) for p in curve if p[regime]["both"] is not None]
        alpha, c = min(reachable) if reachable else (None, None)
        out[f"least_alpha_both_{regime}"], out[f"c_at_least_alpha_both_{regime}"] = alpha, c
    return out


def step_costs(costs: dict, split: bool) -> StepCosts:
    """The measured costs on all cores (AR, SD) or on each worker's share (PEARL)."""
    suffix = "_split_s" if split else "_s"
    blocks = {int(k): v for k, v in costs[f"target_block{suffix}"].items()}  # JSON keys are strings
    return StepCosts(
        target_blocks={1: costs[f"target_step{suffix}"], **blocks}, draft_step=costs.get(f"draft_step{suffix}", 0.0)
    )  # no draft: AR-only runs
