"""The quantize flow's settings besides the method (QuantSpec): the budget, the held-out text, the speed runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from components.checks import in_range


@dataclass
class BudgetSettings:
    # bits/weight over EVERY weight (packed layers + the head at its bits + 32 x norms). 4.45: the least bits
    # of the Fisher frontier within 10% of the Q4_1 model's perplexity (benchmarks/quant_frontier.py).
    # None: quant_method's own share (frac_high / bit_budget over the packed layers, head_bits as set).
    budget: Optional[float] = 4.45

    def __post_init__(self) -> None:
        if self.budget is not None:
            in_range("quant.budget", self.budget, 2.0, 8.0)  # 2-bit codes alone need 2; above 8 nothing is mixed


@dataclass
class EvalSettings:
    context: int = 256  # tokens per perplexity window (non-overlapping windows, stated in every table)
    windows: int = 16  # evaluation windows: 16 x 256 = ~4k predicted tokens of held-out docs
    calibration_windows: int = 8  # calibration windows (a disjoint set of doc topics)
    text_seed: int = 0  # which doc topics are held out


@dataclass
class SpeedSettings:
    matvec_repeats: int = 7  # medians over this many alternating passes
    decode_tokens: int = 32  # greedy tokens for end-to-end tokens/s (0: skip)
    bandwidth_mib: int = 512  # array summed to measure memory bandwidth (above the caches)
