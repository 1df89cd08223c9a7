"""The decoding benchmark's summary: speedups, best-γ SD, α, MAT, Leviathan's bound and the round
models priced with the measured costs, and where a draft falls short, what it would need."""

from __future__ import annotations

from components.decoding.roundmodel import (
    StepCosts,
    alpha_needed,
    alpha_needed_at_cost,
    best_over_gamma,
    best_speedups,
    leviathan_speedup,
    pearl_tokens_per_s,
    scaled_draft,
    sd_tokens_per_s,
    step_costs,
)


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


def draft_shortfall(result: dict, goal_vs_ar: float, goal_vs_sd: float) -> dict:
    """The run's draft against the α map: its cost c, PEARL's in-run α, the α a draft of that cost needs
    for PEARL >= goal_vs_ar x AR (and for both goals), and one sentence saying whether PEARL's measured
    speed meets the goal here and, if not, why."""
    costs, pearl = result["costs"], result["methods"]["pearl"]
    c, alpha = costs["c"], pearl["acceptance_rate"] or 0.0
    needed = alpha_needed_at_cost(costs, c, goal_vs_ar, goal_vs_sd)
    speedup = pearl["tokens_per_s"] / result["methods"]["ar"]["tokens_per_s"]
    need_ar = needed["pearl_vs_ar"]
    if speedup >= goal_vs_ar:
        why = f"PEARL runs {speedup:.2f}x AR (goal {goal_vs_ar:g}x): draft cost c={c:.3f}, in-run alpha={alpha:.2f}."
    elif need_ar is None:
        full, split = step_costs(costs, split=False), step_costs(costs, split=True)
        perfect = best_speedups(scaled_draft(full, c), scaled_draft(split, c))[1](1.0)
        why = (
            f"PEARL runs {speedup:.2f}x AR (goal {goal_vs_ar:g}x): at draft cost c={c:.3f} even a draft that is "
            f"never wrong reaches only {perfect:.2f}x AR on these costs (in-run alpha={alpha:.2f}): a target "
            f"forward over 9 tokens costs {full.target(9) / full.target(1):.2f}x a one-token step (about 1x on a "
            f"GPU), and PEARL's target worker on its share of the cores steps "
            f"{split.target(1) / full.target(1):.2f}x slower than AR on all of them."
        )
    else:
        why = (
            f"PEARL runs {speedup:.2f}x AR (goal {goal_vs_ar:g}x): the draft (c={c:.3f} target steps) is accepted "
            f"at alpha={alpha:.2f}; a draft of this cost needs alpha>={need_ar:.2f} for {goal_vs_ar:g}x AR"
            + (f" and >={needed['both']:.2f} for {goal_vs_sd:g}x SD as well." if needed["both"] is not None else ".")
        )
    return {
        "draft_cost_c": float(c),
        "draft_alpha_in_run": float(alpha),
        "alpha_needed_pearl_vs_ar_at_draft_cost": None if need_ar is None else float(need_ar),
        "alpha_needed_both_at_draft_cost": None if needed["both"] is None else float(needed["both"]),
        "why": why,
    }
