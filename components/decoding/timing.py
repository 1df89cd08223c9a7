"""Timers for the decoding benchmark: per-forward seconds of the target (one token, verify blocks) and
the draft, on all cores and on each PEARL worker's share, sampled interleaved so that a slow spell on
a shared machine slows every quantity alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch

from components.decoding.cache import SequenceRunner, wrap_model

VERIFY_BLOCKS = (2, 3, 5, 9, 17)  # block sizes whose target forward is timed (1 = the one-token step)
COST_ROUNDS = 9  # samples of every cost, interleaved (`interleaved_medians`)


class PrefilledTimer:
    """One model with the prompt and one more token already in its cache: each call times a forward over
    `block` new tokens on `threads` and rolls the cache back, so no sample pays the prompt's prefill again
    (on the native Q4_1 target a 100-token prefill costs ~30 steps). The first incremental forward,
    which pays one-off allocations, happens here, untimed."""

    def __init__(self, model, prompt: Sequence[int]):
        self.runner = SequenceRunner(wrap_model(model))
        self.seq = list(prompt) + [prompt[-1]]
        self.runner.logits_for(self.seq[:-1])
        self.runner.logits_for(self.seq)

    def seconds(self, block: int, threads: int) -> float:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            start = time.perf_counter()
            self.runner.logits_for(self.seq + [self.seq[-1]] * block)
            return time.perf_counter() - start
        finally:
            torch.set_num_threads(before)
            self.runner.rollback(len(self.seq))


def interleaved_medians(probes: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Median of `rounds` samples of each probe, taken one of each per round. On a shared machine a
    slow spell then slows every quantity alike instead of all samples of one (single timings move by
    10-30% here, and the round models' ratios with them)."""
    samples: dict[str, list[float]] = {name: [] for name in probes}
    for _ in range(rounds):
        for name, probe in probes.items():
            samples[name].append(probe())
    return {name: statistics.median(values) for name, values in samples.items()}


def measure_costs(
    target, draft, prompt, threads: int, draft_threads: int, target_threads: int, rounds: int = COST_ROUNDS
) -> dict:
    """Per-forward seconds with all cores and with the PEARL split: the inputs of the round models."""
    tgt = PrefilledTimer(target, prompt)
    probes = {
        "target_step_s": lambda: tgt.seconds(1, threads),
        "target_step_split_s": lambda: tgt.seconds(1, target_threads),
    }
    for k in VERIFY_BLOCKS:
        probes[f"block_{k}"] = lambda k=k: tgt.seconds(k, threads)
        probes[f"block_split_{k}"] = lambda k=k: tgt.seconds(k, target_threads)
    if draft is not None:
        drf = PrefilledTimer(draft, prompt)
        probes["draft_step_s"] = lambda: drf.seconds(1, threads)
        probes["draft_step_split_s"] = lambda: drf.seconds(1, draft_threads)
    medians = interleaved_medians(probes, rounds)
    costs = {
        key: medians[key]
        for key in ("target_step_s", "target_step_split_s", "draft_step_s", "draft_step_split_s")
        if key in medians
    }
    costs["target_block_s"] = {k: medians[f"block_{k}"] for k in VERIFY_BLOCKS}
    costs["target_block_split_s"] = {k: medians[f"block_split_{k}"] for k in VERIFY_BLOCKS}
    if draft is not None:
        costs["c"] = costs["draft_step_s"] / costs["target_step_s"]  # Leviathan's c = t_draft / t_target
        costs["thread_scaling_target"] = costs["target_step_split_s"] / costs["target_step_s"]
    return costs
