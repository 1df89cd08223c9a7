"""SelfPiCo line coverage on the held-out snippets: as-is vs naive vs rule-based vs LLM-guided.

The held-out set (components/selfpico/heldout_snippets.txt, 41 snippets written for this benchmark
alone: no prompt, rule or tuning run used them) is the scored set. Lines are counted as distinct
lines where an `ast.stmt` starts. Every execution runs in the sandbox; predictors alternate snippet
by snippet. Reported per predictor: line coverage, the listed latent type errors found (a TypeError
reported at the listed line and blamed on the snippet, not on an injected value), and misattributed
type errors (a listed one blamed on injected values, or any other TypeError blamed on the snippet).

The LLM-guided predictor is the embedded SmolLM2-135M-Instruct: `--llm-model-path` loads a copy
tuned by the `tune_selfpico` flow (then prompted zero-shot); `--llm-base-url` points it at an
OpenAI-compatible endpoint instead. `--dev` adds the development set (the flow's written snippets
and package function bodies) for the rule-based predictors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from matplotlib.figure import Figure

from benchmarks.common import target, write_result
from components.llm import factory
from components.sandbox import Sandbox, SandboxLimits
from components.selfpico.executor import EXPLORE, MAX_RETRIES, execute_snippet, summarize
from components.selfpico.predictors import (
    CANDIDATES,
    AsIsPredictor,
    LLMPredictor,
    NaivePredictor,
    PredictionRequest,
    RuleBasedPredictor,
)
from components.selfpico.snippets import heldout_snippets, package_function_snippets, written_snippets


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-llm", action="store_true", help="only the non-learned predictors")
    parser.add_argument("--llm-model-path", default=None, help="a tuned SmolLM2 folder (tune_selfpico's)")
    parser.add_argument(
        "--llm-model-made-by",
        default="mlsys run tune_selfpico",
        help="the command that made --llm-model-path's model (recorded in the result)",
    )
    parser.add_argument("--llm-base-url", default=None, help="OpenAI-compatible endpoint for the LLM-guided predictor")
    parser.add_argument("--llm-model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--limit", type=int, default=None, help="first N held-out snippets")
    parser.add_argument("--max-retries", type=int, default=MAX_RETRIES, help="feedback retries per value (LLM-guided)")
    parser.add_argument(
        "--candidates", type=int, default=CANDIDATES, help="LLM values asked per name, the furthest kept (LLM-guided)"
    )
    parser.add_argument(
        "--explore", type=int, default=EXPLORE, help="values asked after the loop for lines that never ran (LLM-guided)"
    )
    parser.add_argument(
        "--no-llm-only",
        action="store_true",
        help="skip the LLM-only ablation (the model's values alone: no rule-based value anywhere)",
    )
    parser.add_argument("--dev", action="store_true", help="also the development set (rule-based predictors)")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args()
    args.quick = not args.full
    return args


def _build_llm(args):
    if args.llm_base_url:
        return factory.openai_compatible(model=args.llm_model, base_url=args.llm_base_url), args.llm_model
    if args.llm_model_path:
        return factory.embedded(model_path=args.llm_model_path), f"SmolLM2-135M-Instruct tuned ({args.llm_model_path})"
    return factory.embedded(), "embedded SmolLM2-135M-Instruct (Q4_1 dequantized), few-shot"


def _tuning_record(model_path: str) -> dict:
    """What the tuned model's tuning.json says of how it was made (data, settings, loss; no curve)."""
    path = Path(model_path) / "tuning.json"
    if not path.is_file():
        return {}
    summary = json.loads(path.read_text())
    report = {k: v for k, v in summary.get("report", {}).items() if k != "losses"}
    return {**{k: v for k, v in summary.items() if k != "report"}, "report": report}


def type_error_judgement(reports: list[dict], snippets) -> dict[str, float]:
    """Latent type errors found and misattributed type errors, against the held-out list."""
    latent = {s.id: s.expected_error_line for s in snippets if s.expected_error == "TypeError"}
    found = misattributed = blamed_on_injection = 0
    for report in reports:
        for error in report["errors"]:
            if error["error_type"] != "TypeError":
                continue
            listed = latent.get(report["snippet_id"]) == error["line"]
            if listed and not error["involves_injected"]:
                found += 1
            elif listed or not error["involves_injected"]:
                misattributed += 1
            else:
                blamed_on_injection += 1
    return {
        "latent_type_errors": float(len(latent)),
        "latent_type_errors_found": float(found),
        "latent_type_errors_found_fraction": found / len(latent) if latent else 0.0,
        "misattributed_type_errors": float(misattributed),
        "type_errors_blamed_on_injected_values": float(blamed_on_injection),
    }


def values_of_rule_based(reports: list[dict], snippets) -> dict[str, int]:
    """How many of the LLM-guided run's final values are the rule-based predictor's own value for
    that key (chosen by execution, or after the retries): the rest are the model's."""
    rule, code = RuleBasedPredictor(), {s.id: s.code for s in snippets}
    same = sum(
        value == rule.predict(PredictionRequest(key, code[r["snippet_id"]], ""))
        for r in reports
        for key, value in r["values"].items()
        if not key.startswith("import#")
    )
    kept = sum(not key.startswith("import#") for r in reports for key in r["values"])
    return {"llm_values_kept": kept, "llm_values_equal_to_rule_based": same}


def run_set(
    snippets, predictors: dict, sandbox, label: str, max_retries: int = MAX_RETRIES, explore: int = EXPLORE
) -> dict[str, list[dict]]:
    reports: dict[str, list[dict]] = {name: [] for name in predictors}
    for i, snippet in enumerate(snippets):
        for name, predictor in predictors.items():
            report = execute_snippet(snippet, predictor, sandbox, max_retries=max_retries, explore=explore).as_dict()
            report.update(origin=snippet.origin, expected_error=snippet.expected_error)
            reports[name].append(report)
        print(
            f"[{label} {i + 1}/{len(snippets)}] {snippet.id}: "
            + ", ".join(f"{n}={reports[n][-1]['coverage']:.2f}" for n in predictors),
            file=sys.stderr,
        )
    return reports


def main() -> None:
    args = _args()
    heldout = heldout_snippets()[: args.limit]
    predictors = {"as_is": AsIsPredictor(), "naive": NaivePredictor(), "rule_based": RuleBasedPredictor()}
    llm = llm_name = None
    if not args.no_llm:
        llm, llm_name = _build_llm(args)
        tuned = bool(args.llm_model_path)
        predictors["llm"] = LLMPredictor(
            llm,
            max_tokens=64,
            fallback=RuleBasedPredictor(),
            few_shot=not tuned,
            host_checks=1,
            candidates=args.candidates,
        )
        if not args.no_llm_only:  # ablation: what the model does alone (no rule-based value anywhere)
            predictors["llm_only"] = LLMPredictor(
                llm, max_tokens=64, fallback=None, few_shot=not tuned, host_checks=1, candidates=args.candidates
            )
    sandbox = Sandbox(SandboxLimits(wall_seconds=10, cpu_seconds=5))
    start = time.perf_counter()
    load_at_start = os.getloadavg()
    reports = run_set(heldout, predictors, sandbox, "heldout", args.max_retries, args.explore)
    results: dict = {
        "heldout": {name: summarize(rows) | type_error_judgement(rows, heldout) for name, rows in reports.items()},
        "max_retries": args.max_retries,
        "llm_candidates": args.candidates,
        "llm_explore": args.explore,
    }
    results["heldout_snippets"] = len(heldout)
    results["heldout_latent_type_errors_listed"] = [
        {"snippet": s.id, "type": s.expected_error, "line": s.expected_error_line} for s in heldout if s.expected_error
    ]
    results["heldout_lines"] = sum(r["n_lines"] for r in reports["as_is"])
    if args.dev:
        dev = written_snippets() + package_function_snippets(
            ["textwrap", "difflib", "shlex", "fractions", "statistics", "html", "calendar", "colorsys"],
            16 if args.quick else 40,
            seed=0,
        )
        dev_predictors = {k: v for k, v in predictors.items() if k != "llm"}
        dev_reports = run_set(dev, dev_predictors, sandbox, "dev")
        results["development"] = {name: summarize(rows) for name, rows in dev_reports.items()}
        results["development_per_snippet"] = dev_reports
    if llm is not None:
        results["llm_model"] = llm_name
        if args.llm_model_path:
            results["llm_model_made_by"] = {"command": args.llm_model_made_by, **_tuning_record(args.llm_model_path)}
        results["llm_usage"] = llm.usage.as_dict()  # the LLM-guided run and the LLM-only ablation together
        results["llm_unparseable_replies"] = predictors["llm"].unparseable_replies
        results["llm_refused_replies"] = predictors["llm"].refused_replies  # no value: asked again on the host
        results["llm_fallback_values"] = predictors["llm"].fallback_values  # rule-based value after refusals
        # values finally kept per snippet, and of those the rule-based fallback's (chosen by execution or
        # after the retries): the rest are the model's own
        results.update(values_of_rule_based(reports["llm"], heldout))
        results["llm_explored_values"] = sum(r["explored"] for r in reports["llm"])  # kept after the loop
        if "llm_only" in reports:
            results["llm_only_values_equal_to_rule_based"] = values_of_rule_based(reports["llm_only"], heldout)[
                "llm_values_equal_to_rule_based"
            ]  # the model's own values that happen to equal the rule-based predictor's
            results["llm_only_refused_replies"] = predictors["llm_only"].refused_replies
            results["llm_only_unparseable_replies"] = predictors["llm_only"].unparseable_replies
    results["seconds_total"] = time.perf_counter() - start
    # coverage does not depend on speed, but a loaded machine can push a run past its sandbox time limit
    results["load_average_at_start"], results["load_average_at_end"] = load_at_start, os.getloadavg()
    results["per_snippet"] = reports
    results["note"] = (
        "coverage = distinct executed lines where an ast.stmt starts / such lines (best run); "
        "held-out snippets only in the targets."
    )
    names = list(predictors)
    fig = Figure(figsize=(7, 3.8))
    ax = fig.subplots()
    ax.bar(names, [results["heldout"][n]["line_coverage"] for n in names], color="tab:blue")
    for i, n in enumerate(names):
        ax.text(
            i,
            results["heldout"][n]["line_coverage"] + 0.01,
            f"{results['heldout'][n]['line_coverage']:.2f}",
            ha="center",
            fontsize=8,
        )
    ax.set_ylim(0, 1)
    ax.set_ylabel("line coverage (held-out)")
    ax.set_title(
        f"SelfPiCo on {len(heldout)} held-out snippets" + (f" (LLM: {llm_name})" if llm_name else ""), fontsize=8
    )
    rule = results["heldout"]["rule_based"]
    judged = results["heldout"].get("llm", rule)  # the method's figures; rule-based when no LLM ran
    results["type_error_targets_from"] = "llm" if "llm" in results["heldout"] else "rule_based"
    targets = [target("heldout_rule_based_line_coverage", rule["line_coverage"], 0.60, ">=")]
    if "llm" in results["heldout"]:
        llm_cov = results["heldout"]["llm"]["line_coverage"]
        targets += [
            target("heldout_llm_line_coverage", llm_cov, 0.75, ">="),
            target("heldout_llm_minus_rule_based", llm_cov - rule["line_coverage"], 0.10, ">="),
        ]
    targets += [
        target("heldout_latent_type_errors_found_fraction", judged["latent_type_errors_found_fraction"], 0.8, ">="),
        target("heldout_misattributed_type_errors", judged["misattributed_type_errors"], 0, "<="),
    ]
    mode = argparse.Namespace(full=args.full, tracking_uri=args.tracking_uri, no_mlflow=args.no_mlflow)
    write_result("selfpico", results, targets, figure=fig, args=mode)


if __name__ == "__main__":
    main()
