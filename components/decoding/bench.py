"""Side-by-side measurement of the decoding methods (shared by benchmarks/decoding.py and the
`decode_bench` flow): same prompts, greedy, same total core budget, methods alternated per repeat.

Equal cores: AR, vanilla SD and HF assisted generation run each forward with all `threads`;
PEARL and its ablations split the same budget between the draft worker and the target worker.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Optional, Sequence

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


def overlapped_speedup(alpha: float, gamma: int, c: float) -> float:
    """The same rounds with draft and target fully overlapped (PEARL's ideal): round = max(γc, 1) target steps."""
    return expected_tokens(alpha, gamma) / max(gamma * c, 1.0)


def alpha_needed(speedup: float, c: float, model) -> float:
    """Smallest α (to 0.01) for which some γ ≤ 16 reaches `speedup` under `model`; 1.0 if none."""
    for step in range(0, 100):
        alpha = step / 100
        if max(model(alpha, g, c) for g in range(1, 17)) >= speedup:
            return alpha
    return 1.0


def verify_seconds(model, prompt: Sequence[int], block: int, threads: int, steps: int = 3) -> float:
    """Median seconds of a forward over `block` new tokens (the target's verification pass)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        samples = []
        for _ in range(steps):
            runner = SequenceRunner(wrap_model(model))
            runner.logits_for(list(prompt))
            start = time.perf_counter()
            runner.logits_for(list(prompt) + [prompt[-1]] * block)
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)
    finally:
        torch.set_num_threads(before)


def _aggregate(runs: list[DecodeStats]) -> dict:
    tokens = sum(r.new_tokens for r in runs)
    seconds = sum(r.seconds for r in runs)
    verified = sum(r.draft_tokens_verified for r in runs)
    target_forwards = sum(r.target_forwards for r in runs)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds if seconds else 0.0,
            "target_forwards": target_forwards, "draft_forwards": sum(r.draft_forwards for r in runs),
            "acceptance_rate": sum(r.draft_tokens_accepted for r in runs) / verified if verified else None,
            "mean_accepted_tokens": tokens / target_forwards if target_forwards else 0.0}


def hf_assisted_generate(target, draft, prompt: Sequence[int], max_new: int, eos: Sequence[int]) -> DecodeStats:
    """transformers `generate(assistant_model=...)` (greedy; its adaptive +2/−1 draft length)."""
    ids = torch.tensor([list(prompt)], device=next(target.parameters()).device)
    start = time.perf_counter()
    with torch.no_grad():
        out = target.generate(ids, assistant_model=draft, max_new_tokens=max_new, do_sample=False,
                              eos_token_id=list(eos) or None, pad_token_id=(list(eos) or [0])[0])
    stats = DecodeStats(method="hf_assisted", prompt_tokens=len(prompt), new_tokens=out.shape[1] - len(prompt))
    stats.seconds = time.perf_counter() - start
    return stats


def compare_methods(target, draft, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, threads: int,
                    pearl_gamma: Optional[int], sd_gammas: Sequence[int], ablation_gamma: Optional[int] = None,
                    max_gamma: int = 8,
                    repeats: int = 2, eos: Sequence[int] = (), hf_assisted: bool = True,
                    log: Callable[[str], None] = print) -> dict:
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
    decoders = {name: build_decoder(c["method"], target, draft, gamma=max(1, c["gamma"]), parallel=True,
                                    draft_threads=draft_threads, target_threads=target_threads)
                for name, c in configs.items()}
    use_hf = hf_assisted and draft is not None and hasattr(draft, "generation_config")
    names = list(decoders) + (["hf_assisted"] if use_hf else [])
    per_repeat: dict[str, list[dict]] = {n: [] for n in names}
    reference: dict[int, list[int]] = {}
    mismatches: dict[str, int] = {n: 0 for n in names}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # sequential methods and the coordinating thread get every core
    try:
        for name, decoder in decoders.items():  # warm-up: one short generation each
            decoder.generate(prompts[0], 4)
        for rep in range(repeats):
            order = names[rep % len(names):] + names[: rep % len(names)]  # rotate: no method always first
            for name in order:
                runs = []
                for i, prompt in enumerate(prompts):
                    if name == "hf_assisted":
                        runs.append(hf_assisted_generate(target, draft, prompt, max_new_tokens, eos))
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
    costs = measure_costs(target, draft, prompts[0], threads, draft_threads, target_threads, pearl_gamma)
    methods = {}
    for name in names:
        reps = per_repeat[name]
        summary = dict(reps[-1])
        summary["tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in reps)
        summary["tokens_per_s_repeats"] = [r["tokens_per_s"] for r in reps]
        summary["gamma"] = configs.get(name, {}).get("gamma")
        summary["greedy_mismatches_vs_ar"] = mismatches[name]
        methods[name] = summary
    return {"methods": methods, "costs": costs, "threads": threads, "draft_threads": draft_threads,
            "target_threads": target_threads, "pearl_gamma": pearl_gamma}


def measure_costs(target, draft, prompt, threads: int, draft_threads: int, target_threads: int, gamma: int) -> dict:
    """Per-step seconds with all cores and with the PEARL split: the inputs of the bounds."""
    costs = {"target_step_s": step_seconds(target, prompt, threads=threads),
             "target_step_split_s": step_seconds(target, prompt, threads=target_threads),
             "target_verify_s": verify_seconds(target, prompt, gamma + 1, threads),
             "target_verify_split_s": verify_seconds(target, prompt, gamma + 1, target_threads)}
    if draft is not None:
        costs.update({"draft_step_s": step_seconds(draft, prompt, threads=threads),
                      "draft_step_split_s": step_seconds(draft, prompt, threads=draft_threads)})
        costs["c"] = costs["draft_step_s"] / costs["target_step_s"]  # Leviathan's c = t_draft / t_target
        costs["thread_scaling_target"] = costs["target_step_split_s"] / costs["target_step_s"]
    return costs


def summarize(result: dict) -> dict[str, float]:
    """Speedups, best-γ SD, α, MAT and the bounds (Leviathan for SD; perfect overlap for PEARL)."""
    methods, costs = result["methods"], result["costs"]
    ar = methods["ar"]["tokens_per_s"]
    sd_names = [n for n in methods if n.startswith("sd_g")]
    best_sd = max(sd_names, key=lambda n: methods[n]["tokens_per_s"])
    sd, pearl = methods[best_sd], methods["pearl"]
    out = {"ar_tokens_per_s": ar, "best_sd_gamma": float(sd["gamma"]), "sd_tokens_per_s": sd["tokens_per_s"],
           "pearl_tokens_per_s": pearl["tokens_per_s"], "sd_speedup_vs_ar": sd["tokens_per_s"] / ar,
           "pearl_speedup_vs_ar": pearl["tokens_per_s"] / ar, "pearl_speedup_vs_sd": pearl["tokens_per_s"] / sd["tokens_per_s"],
           "pearl_gamma": float(result["pearl_gamma"]), "sd_acceptance_rate": sd["acceptance_rate"] or 0.0,
           "pearl_acceptance_rate": pearl["acceptance_rate"] or 0.0, "sd_mat": sd["mean_accepted_tokens"],
           "pearl_mat": pearl["mean_accepted_tokens"],
           "greedy_mismatches": float(sum(m["greedy_mismatches_vs_ar"] for m in methods.values()))}
    for name in ("pearl_no_pre", "pearl_no_post", "hf_assisted"):
        if name in methods:
            out[f"{name}_speedup_vs_ar"] = methods[name]["tokens_per_s"] / ar
    if "c" in costs:
        alpha, c = out["sd_acceptance_rate"], costs["c"]
        out["c"] = c
        out["leviathan_bound_sd_best_gamma"] = leviathan_speedup(alpha, int(sd["gamma"]), c)
        out["leviathan_bound_sd_any_gamma"] = max(leviathan_speedup(alpha, g, c) for g in range(1, 17))
        # PEARL with perfect overlap and no overhead: each round costs the slower worker's time on
        # its share of the cores; tokens per round = the measured MAT.
        g = result["pearl_gamma"]
        round_s = max(g * costs["draft_step_split_s"], costs["target_verify_split_s"])
        out["pearl_bound_vs_ar"] = pearl["mean_accepted_tokens"] * costs["target_step_s"] / round_s
        out["pearl_bound_vs_sd"] = out["pearl_bound_vs_ar"] / out["sd_speedup_vs_ar"]
        out["thread_scaling_target"] = costs["thread_scaling_target"]
        # What the draft would have to reach at this c: α for SD 2x AR, and for ideal PEARL 2x AR.
        out["alpha_needed_sd_2x_ar"] = alpha_needed(2.0, c, leviathan_speedup)
        out["alpha_needed_pearl_ideal_2x_ar"] = alpha_needed(2.0, c, overlapped_speedup)
    return out
