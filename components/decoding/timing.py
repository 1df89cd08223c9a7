"""Timers for the decoding benchmark: per-forward seconds of the target (one token, verify blocks) and
the draft, on all cores and on each PEARL worker's share, sampled interleaved so that a slow spell on
a shared machine slows every quantity alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch

from components.decoding.cache import SequenceRunner, wrap_model
from components.decoding.engine import step_seconds

VERIFY_BLOCKS = (2, 3, 5, 9, 17)  # block sizes whose target forward is timed (1 = the one-token step)
COST_ROUNDS = 9  # samples of every cost, interleaved (`interleaved_medians`)


def verify_seconds(model, prompt: Sequence[int], block: int, threads: int, steps: int = 3) -> float:
    """Median seconds of a forward over `block` new tokens (the target's verification pass)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        samples = []
        for _ in range(steps):
            runner = SequenceRunner(wrap_model(model))
            seq = list(prompt)
            runner.logits_for(seq)
            seq.append(seq[-1])
            runner.logits_for(seq)  # the first incremental forward pays one-off allocations: not timed
            start = time.perf_counter()
            runner.logits_for(seq + [seq[-1]] * block)
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)
    finally:
        torch.set_num_threads(before)


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
    probes = {
        "target_step_s": lambda: step_seconds(target, prompt, steps=1, threads=threads),
        "target_step_split_s": lambda: step_seconds(target, prompt, steps=1, threads=target_threads),
    }
    for k in VERIFY_BLOCKS:
        probes[f"block_{k}"] = lambda k=k: verify_seconds(target, prompt, k, threads, steps=1)
        probes[f"block_split_{k}"] = lambda k=k: verify_seconds(target, prompt, k, target_threads, steps=1)
    if draft is not None:
        probes["draft_step_s"] = lambda: step_seconds(draft, prompt, steps=1, threads=threads)
        probes["draft_step_split_s"] = lambda: step_seconds(draft, prompt, steps=1, threads=draft_threads)
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
