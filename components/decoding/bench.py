"""Side-by-side measurement of the decoding methods (shared by benchmarks/decoding.py and the
`decode_bench` flow): same prompts, greedy, same total core budget, methods alternated per repeat.

Equal cores: AR, vanilla SD and HF assisted generation run each forward with all `threads`;
PEARL and its ablations split the same budget between the draft worker and the target worker.
The round models live in roundmodel.py, the timers in timing.py, the transformers peers in
hf_peers.py and the summary in summary.py.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Optional

import torch

from components.decoding.cache import SequenceRunner, wrap_model
from components.decoding.engine import DecodeStats, build_decoder, measure_cost_ratio
from components.decoding.hf_peers import hf_assisted_generate, transformers_draft
from components.decoding.roundmodel import alpha_needed_at_cost
from components.decoding.timing import COST_ROUNDS, PrefilledTimer, interleaved_medians, measure_costs
from components.decoding.workers import split_threads


def greedy_agreement(draft, sequences: Sequence[tuple[Sequence[int], Sequence[int]]], target=None) -> float:
    """Teacher-forced greedy α: the share of the target's greedy tokens that the draft's argmax
    predicts after the same prefix. Greedy SD accepts a proposal exactly when it is this argmax, so
    this is the acceptance rate over every generated position, measured with one draft forward per
    sequence; the engine's measured α averages over the positions where rounds happen to propose.
    A draft that reads the target's states (EAGLE) gets them over the same prefix from `target` first
    (its one-step α: in a round only its first proposal has the target's state right before it).

    `sequences`: (prompt, the target's greedy continuation) pairs.
    """
    hits = total = 0
    model = wrap_model(draft)
    if model.reads_target_states and target is None:
        raise ValueError(f"{model.name} reads the target's states: its greedy agreement needs the target")
    for prompt, generated in sequences:
        if not generated:
            continue
        tokens = list(prompt) + list(generated)
        runner = SequenceRunner(model)
        if model.reads_target_states:
            states = SequenceRunner(wrap_model(target), keep_states=True)
            states.logits_for(tokens[:-1])
            states.hand_states(runner)
        logits = runner.logits_for(tokens[:-1])  # row i predicts token i + 1
        predicted = logits[len(prompt) - 1 :].argmax(-1)
        hits += int((predicted == torch.tensor(list(generated))).sum())
        total += len(generated)
    return hits / total if total else 0.0


def draft_frontier(
    target,
    drafts: dict,
    sequences: Sequence[tuple[Sequence[int], Sequence[int]]],
    threads: int,
    costs: dict,
    goal_vs_ar: float,
    goal_vs_sd: float,
) -> dict[str, dict]:
    """Where candidate drafts sit against what the goals need: per draft its cost c (one-token step on
    all cores over the target's, timed now like `measure_costs`), its greedy α on the target's own
    outputs (`greedy_agreement`), and the α a draft of that cost needs (`alpha_needed_at_cost`)."""
    prompt = sequences[0][0]
    timers = {name: PrefilledTimer(draft, prompt) for name, draft in drafts.items()}
    probes = {name: (lambda t=timer: t.seconds(1, threads)) for name, timer in timers.items()}
    target_timer = PrefilledTimer(target, prompt)
    steps = interleaved_medians({**probes, "_target": lambda: target_timer.seconds(1, threads)}, COST_ROUNDS)
    out = {}
    for name, draft in drafts.items():
        c = steps[name] / steps["_target"]
        out[name] = {
            "c": c,
            "alpha_greedy": greedy_agreement(draft, sequences, target),
            "alpha_needed": alpha_needed_at_cost(costs, c, goal_vs_ar, goal_vs_sd),
        }
    return out


def in_run_alpha(
    target, draft, sequences: Sequence[tuple[Sequence[int], Sequence[int]]], c: float, threads: int, max_gamma: int = 8
) -> dict[str, float]:
    """PEARL with `draft` over the same prompts, greedy, γ = round(1/c) capped at `max_gamma` (PEARL's rule):
    the engine's α (the draft's proposals after its own earlier ones included), tokens per target forward,
    and the prompts whose output differs from the target's greedy continuation (must be 0)."""
    gamma = min(max_gamma, max(1, round(1 / max(c, 1e-9))))
    draft_threads, target_threads = split_threads(threads, draft=draft)
    decoder = build_decoder("pearl", target, draft, gamma, True, draft_threads, target_threads)
    runs, mismatches = [], 0
    try:
        for prompt, generated in sequences:
            tokens, stats = decoder.generate(prompt, len(generated))
            mismatches += int(tokens != list(generated))
            runs.append(stats)
    finally:
        decoder.close()
    verified = sum(r.draft_tokens_verified for r in runs)
    return {
        "gamma": float(gamma),
        "alpha_in_run": sum(r.draft_tokens_accepted for r in runs) / verified if verified else 0.0,
        "mean_accepted_tokens": sum(r.new_tokens for r in runs) / max(1, sum(r.target_forwards for r in runs)),
        "greedy_mismatches": float(mismatches),
    }


def _aggregate(runs: list[DecodeStats]) -> dict:
    tokens = sum(r.new_tokens for r in runs)
    seconds = sum(r.seconds for r in runs)
    verified = sum(r.draft_tokens_verified for r in runs)
    target_forwards, draft_forwards = sum(r.target_forwards for r in runs), sum(r.draft_forwards for r in runs)
    return {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds else 0.0,
        "target_forwards": target_forwards,
        "draft_forwards": draft_forwards,
        # seconds inside each model's forwards; in PEARL they overlap, and beside each other
        # each forward is slower than alone (shared memory bus): compare with the costs.
        "target_forward_s": sum(r.target_seconds for r in runs) / target_forwards if target_forwards else None,
        "draft_forward_s": sum(r.draft_seconds for r in runs) / draft_forwards if draft_forwards else None,
        "acceptance_rate": sum(r.draft_tokens_accepted for r in runs) / verified if verified else None,
        "mean_accepted_tokens": tokens / target_forwards if target_forwards else 0.0,
    }


def method_configs(sd_gammas: Sequence[int], pearl_gamma: int, ablation_gamma: int) -> dict[str, dict]:
    """The benchmark's rows: AR, SD at each γ, PEARL and its two ablations, each with its method and γ."""
    configs: dict[str, dict] = {"ar": {"method": "ar", "gamma": 0}}
    for g in sd_gammas:
        configs[f"sd_g{g}"] = {"method": "sd", "gamma": g}
    configs["pearl"] = {"method": "pearl", "gamma": pearl_gamma}
    configs["pearl_no_pre"] = {"method": "pearl_no_pre", "gamma": ablation_gamma}
    configs["pearl_no_post"] = {"method": "pearl_no_post", "gamma": ablation_gamma}
    return configs


def _timed_repeats(
    names: list[str],
    decode: Callable[[str, Sequence[int]], tuple[Optional[list[int]], DecodeStats]],
    prompts: Sequence[Sequence[int]],
    repeats: int,
    log: Callable[[str], None],
) -> tuple[dict[str, list[dict]], dict[str, int], dict[int, list[int]]]:
    """Every method over every prompt, method order rotated each repeat; per repeat the aggregate
    figures, per method the prompts whose greedy tokens differ from AR's, and AR's tokens."""
    per_repeat: dict[str, list[dict]] = {n: [] for n in names}
    reference: dict[int, list[int]] = {}
    mismatches: dict[str, int] = {n: 0 for n in names}
    for rep in range(repeats):
        order = names[rep % len(names) :] + names[: rep % len(names)]  # rotate: no method always first
        for name in order:
            runs = []
            for i, prompt in enumerate(prompts):
                tokens, stats = decode(name, prompt)
                if name == "ar":
                    reference.setdefault(i, tokens)
                elif tokens is not None and i in reference and tokens != reference[i]:
                    mismatches[name] += 1
                runs.append(stats)
            per_repeat[name].append(_aggregate(runs))
            log(f"repeat {rep} {name}: {per_repeat[name][-1]['tokens_per_s']:.2f} tok/s")
    return per_repeat, mismatches, reference


def compare_methods(
    target,
    draft,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    threads: int,
    pearl_gamma: Optional[int],
    sd_gammas: Sequence[int],
    ablation_gamma: Optional[int] = None,
    max_gamma: int = 8,
    repeats: int = 2,
    eos: Sequence[int] = (),
    hf_assisted: bool = True,
    cost_rounds: int = COST_ROUNDS,
    log: Callable[[str], None] = print,
) -> dict:
    """Greedy decode every prompt with every method; median tokens/s over repeats, stats per method."""
    draft_threads, target_threads = split_threads(threads, draft=draft)
    if pearl_gamma is None:  # PEARL's rule: γ = round(c), c = t_target / t_draft, measured here
        pearl_gamma = min(max_gamma, int(measure_cost_ratio(target, draft, prompts[0])["gamma"]))
        log(f"pearl gamma from the measured cost ratio: {pearl_gamma}")
    configs = method_configs(sd_gammas, pearl_gamma, ablation_gamma or pearl_gamma)
    decoders = {
        name: build_decoder(
            c["method"],
            target,
            draft,
            gamma=max(1, c["gamma"]),
            parallel=True,
            draft_threads=draft_threads,
            target_threads=target_threads,
        )
        for name, c in configs.items()
    }
    hf_draft = transformers_draft(draft) if hf_assisted and hasattr(target, "generate") else None

    def decode(name: str, prompt: Sequence[int]) -> tuple[Optional[list[int]], DecodeStats]:
        if name == "hf_assisted":
            return None, hf_assisted_generate(target, hf_draft, prompt, max_new_tokens, eos)
        return decoders[name].generate(prompt, max_new_tokens, stop_ids=eos)

    names = list(decoders) + (["hf_assisted"] if hf_draft is not None else [])
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # sequential methods and the coordinating thread get every core
    try:
        for decoder in decoders.values():  # warm-up: one short generation each
            decoder.generate(prompts[0], 4)
        per_repeat, mismatches, reference = _timed_repeats(names, decode, prompts, repeats, log)
    finally:
        torch.set_num_threads(previous)
        for decoder in decoders.values():
            decoder.close()
    costs = measure_costs(target, draft, prompts[0], threads, draft_threads, target_threads, cost_rounds)
    methods = {}
    for name in names:
        reps = per_repeat[name]
        summary = dict(reps[-1])
        summary["tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in reps)
        summary["tokens_per_s_repeats"] = [r["tokens_per_s"] for r in reps]
        summary["gamma"] = configs.get(name, {}).get("gamma")
        summary["greedy_mismatches_vs_ar"] = mismatches[name]
        methods[name] = summary
    return {
        "methods": methods,
        "costs": costs,
        "threads": threads,
        "draft_threads": draft_threads,
        "target_threads": target_threads,
        "pearl_gamma": pearl_gamma,
        "ar_outputs": [reference[i] for i in range(len(prompts))],
    }
