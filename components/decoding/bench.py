"""Side-by-side measurement of the decoding methods (shared by benchmarks/decoding.py and the
`decode_bench` flow): same prompts, greedy, same total core budget, methods alternated per repeat.

Equal cores: AR, vanilla SD and HF assisted generation run each forward with all `threads`;
PEARL and its ablations split the same budget between the draft worker and the target worker.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

import torch

from components.decoding.cache import SequenceRunner, wrap_model
from components.decoding.engine import DecodeStats, build_decoder, measure_cost_ratio, step_seconds
from components.decoding.workers import split_threads


def expected_tokens(alpha: float, gamma: int) -> float:
    """Tokens per verification round with γ drafts accepted i.i.d. with probability α."""
    return gamma + 1 if alpha >= 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)


def leviathan_speedup(alpha: float, gamma: int, c: float) -> float:
    """Expected SD speedup over AR (Leviathan et al.): (1 − α^{γ+1}) / ((1 − α)(γc + 1)), c = t_draft/t_target."""
    return expected_tokens(alpha, gamma) / (gamma * c + 1)


VERIFY_BLOCKS = (2, 3, 5, 9, 17)  # block sizes whose target forward is timed (1 = the one-token step)
COST_ROUNDS = 9  # samples of every cost, interleaved (`interleaved_medians`)


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


def greedy_agreement(draft, sequences: Sequence[tuple[Sequence[int], Sequence[int]]]) -> float:
    """Teacher-forced greedy α: the share of the target's greedy tokens that the draft's argmax
    predicts after the same prefix. Greedy SD accepts a proposal exactly when it is this argmax, so
    this is the acceptance rate over every generated position, measured with one draft forward per
    sequence; the engine's measured α averages over the positions where rounds happen to propose.

    `sequences`: (prompt, the target's greedy continuation) pairs.
    """
    hits = total = 0
    model = wrap_model(draft)
    for prompt, generated in sequences:
        if not generated:
            continue
        tokens = list(prompt) + list(generated)
        logits = SequenceRunner(model).logits_for(tokens[:-1])  # row i predicts token i + 1
        predicted = logits[len(prompt) - 1 :].argmax(-1)
        hits += int((predicted == torch.tensor(list(generated))).sum())
        total += len(generated)
    return hits / total if total else 0.0


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
    probes = {
        name: (lambda d=draft: step_seconds(d, prompt, steps=1, threads=threads)) for name, draft in drafts.items()
    }
    steps = interleaved_medians(
        {**probes, "_target": lambda: step_seconds(target, prompt, steps=1, threads=threads)}, COST_ROUNDS
    )
    out = {}
    for name, draft in drafts.items():
        c = steps[name] / steps["_target"]
        out[name] = {
            "c": c,
            "alpha_greedy": greedy_agreement(draft, sequences),
            "alpha_needed": alpha_needed_at_cost(costs, c, goal_vs_ar, goal_vs_sd),
        }
    return out


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


def hf_assisted_generate(target, draft, prompt: Sequence[int], max_new: int, eos: Sequence[int]) -> DecodeStats:
    """transformers `generate(assistant_model=...)` (greedy; its adaptive +2/−1 draft length)."""
    ids = torch.tensor([list(prompt)], device=next(target.parameters()).device)
    start = time.perf_counter()
    with torch.no_grad():
        out = target.generate(
            ids,
            assistant_model=draft,
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=list(eos) or None,
            pad_token_id=(list(eos) or [0])[0],
        )
    stats = DecodeStats(method="hf_assisted", prompt_tokens=len(prompt), new_tokens=out.shape[1] - len(prompt))
    stats.seconds = time.perf_counter() - start
    return stats


def transformers_draft(draft):
    """The draft as a transformers model for `generate(assistant_model=...)`: itself, the project's
    GPT converted (same weights), or None (no draft, or one transformers cannot run)."""
    from components.lm.model import GPT

    if draft is not None and hasattr(draft, "generation_config"):
        return draft
    if isinstance(draft, GPT):
        from components.decoding.models import gpt_as_hf

        return gpt_as_hf(draft)
    return None


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
    log: Callable[[str], None] = print,
) -> dict:
    """Greedy decode every prompt with every method; median tokens/s over repeats, stats per method."""
    draft_threads, target_threads = split_threads(threads)
    if pearl_gamma is None:  # PEARL's rule: γ = round(c), c = t_target / t_draft, measured here
        pearl_gamma = min(max_gamma, int(measure_cost_ratio(target, draft, prompts[0])["gamma"]))
        log(f"pearl gamma from the measured cost ratio: {pearl_gamma}")
    ablation_gamma = ablation_gamma or pearl_gamma
    configs: dict[str, dict] = {"ar": {"method": "ar", "gamma": 0}}
    for g in sd_gammas:
        configs[f"sd_g{g}"] = {"method": "sd", "gamma": g}
    configs["pearl"] = {"method": "pearl", "gamma": pearl_gamma}
    configs["pearl_no_pre"] = {"method": "pearl_no_pre", "gamma": ablation_gamma}
    configs["pearl_no_post"] = {"method": "pearl_no_post", "gamma": ablation_gamma}
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
    hf_draft = transformers_draft(draft) if hf_assisted else None
    names = list(decoders) + (["hf_assisted"] if hf_draft is not None else [])
    per_repeat: dict[str, list[dict]] = {n: [] for n in names}
    reference: dict[int, list[int]] = {}
    mismatches: dict[str, int] = {n: 0 for n in names}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # sequential methods and the coordinating thread get every core
    try:
        for decoder in decoders.values():  # warm-up: one short generation each
            decoder.generate(prompts[0], 4)
        for rep in range(repeats):
            order = names[rep % len(names) :] + names[: rep % len(names)]  # rotate: no method always first
            for name in order:
                runs = []
                for i, prompt in enumerate(prompts):
                    if name == "hf_assisted":
                        runs.append(hf_assisted_generate(target, hf_draft, prompt, max_new_tokens, eos))
                        continue
                    tokens, stats = decoders[name].generate(prompt, max_new_tokens, stop_ids=eos)
                    if name == "ar":
                        reference.setdefault(i, tokens)
                    elif i in reference and tokens != reference[i]:
                        mismatches[name] += 1
                    runs.append(stats)
                per_repeat[name].append(_aggregate(runs))
                log(f"repeat {rep} {name}: {per_repeat[name][-1]['tokens_per_s']:.2f} tok/s")
    finally:
        torch.set_num_threads(previous)
        for decoder in decoders.values():
            decoder.close()
    costs = measure_costs(target, draft, prompts[0], threads, draft_threads, target_threads)
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


def step_costs(costs: dict, split: bool) -> StepCosts:
    """The measured costs on all cores (AR, SD) or on each worker's share (PEARL)."""
    suffix = "_split_s" if split else "_s"
    blocks = {int(k): v for k, v in costs[f"target_block{suffix}"].items()}  # JSON keys are strings
    return StepCosts(
        target_blocks={1: costs[f"target_step{suffix}"], **blocks}, draft_step=costs.get(f"draft_step{suffix}", 0.0)
    )  # no draft: AR-only runs


def summarize(result: dict) -> dict[str, float]:
    """Speedups, best-γ SD, α, MAT, Leviathan's bound and the round models at the measured costs."""
    methods, costs = result["methods"], result["costs"]
    ar = methods["ar"]["tokens_per_s"]
    sd_names = [n for n in methods if n.startswith("sd_g")]
    best_sd = max(sd_names, key=lambda n: methods[n]["tokens_per_s"])
    sd, pearl = methods[best_sd], methods["pearl"]
    out = {
        "ar_tokens_per_s": ar,
        "best_sd_gamma": float(sd["gamma"]),
        "sd_tokens_per_s": sd["tokens_per_s"],
        "pearl_tokens_per_s": pearl["tokens_per_s"],
        "sd_speedup_vs_ar": sd["tokens_per_s"] / ar,
        "pearl_speedup_vs_ar": pearl["tokens_per_s"] / ar,
        "pearl_speedup_vs_sd": pearl["tokens_per_s"] / sd["tokens_per_s"],
        "pearl_gamma": float(result["pearl_gamma"]),
        "sd_acceptance_rate": sd["acceptance_rate"] or 0.0,
        "pearl_acceptance_rate": pearl["acceptance_rate"] or 0.0,
        "sd_mat": sd["mean_accepted_tokens"],
        "pearl_mat": pearl["mean_accepted_tokens"],
        "greedy_mismatches": float(sum(m["greedy_mismatches_vs_ar"] for m in methods.values())),
    }
    for name in ("pearl_no_pre", "pearl_no_post", "hf_assisted"):
        if name in methods:
            out[f"{name}_speedup_vs_ar"] = methods[name]["tokens_per_s"] / ar
    if "c" not in costs:
        return out
    alpha, c = out["sd_acceptance_rate"], costs["c"]
    out["c"] = c
    out["thread_scaling_target"] = costs["thread_scaling_target"]
    out["leviathan_bound_sd_best_gamma"] = leviathan_speedup(alpha, int(sd["gamma"]), c)
    out["leviathan_bound_sd_any_gamma"] = max(leviathan_speedup(alpha, g, c) for g in range(1, 17))
    # The same rounds priced with the measured costs (a k-token verify is not one step on a CPU;
    # PEARL's workers each have their share of the cores). AR's rate comes from the same timings.
    full, split = step_costs(costs, split=False), step_costs(costs, split=True)
    ar_model = 1 / full.target(1)
    out["verify_9_over_step"] = full.target(9) / full.target(1)
    out["sd_model_vs_ar"] = sd_tokens_per_s(alpha, int(sd["gamma"]), full) / ar_model
    out["pearl_model_vs_ar"] = pearl_tokens_per_s(alpha, int(result["pearl_gamma"]), split) / ar_model
    out["pearl_measured_over_model"] = out["pearl_speedup_vs_ar"] / out["pearl_model_vs_ar"]

    sd_best, pearl_best = best_speedups(full, split)
    out["pearl_model_best_gamma_vs_ar"] = pearl_best(alpha)
    out["pearl_over_sd_model"] = pearl_best(alpha) / sd_best(alpha)  # both at their best γ, measured α
    out["pearl_model_alpha_1_vs_ar"] = pearl_best(1.0)  # a draft of this cost that is never wrong
    # What the draft would have to reach for 2x AR: at the measured costs, and with every block
    # costing one target step as on a GPU (1.0: not even a perfect draft).
    out["alpha_needed_sd_2x_ar"] = alpha_needed(2.0, sd_best)
    out["alpha_needed_pearl_2x_ar"] = alpha_needed(2.0, pearl_best)
    one_step = StepCosts(target_blocks={1: split.target(1)}, draft_step=split.draft_step)
    out["alpha_needed_pearl_2x_ar_if_block_costs_one_step"] = alpha_needed(
        2.0, lambda a: best_over_gamma(pearl_tokens_per_s, a, one_step)[0] / ar_model
    )
    return out
