"""SelfPiCo line coverage: as-is vs naive vs rule-based (LExecutor-style) vs LLM-guided, same snippets.

Every execution runs in the sandbox. Predictors alternate snippet by snippet so that machine noise
hits all alike. The LLM-guided predictor is the embedded SmolLM2-135M-Instruct by default (a CPU
model of ~15 tok/s: it runs on a subset, and the rule-based figure on that same subset is shown
beside it); `--llm-base-url` points it at any OpenAI-compatible endpoint instead.
"""
from __future__ import annotations

import argparse
import sys
import time

from benchmarks.common import target, write_result
from components.sandbox import Sandbox, SandboxLimits
from components.selfpico.executor import execute_snippet, summarize
from components.selfpico.predictors import AsIsPredictor, LLMPredictor, NaivePredictor, RuleBasedPredictor
from components.selfpico.snippets import package_function_snippets, written_snippets
from flows.selfpico import DEFAULT_MODULES


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--llm-base-url", default=None, help="OpenAI-compatible endpoint for the LLM-guided predictor")
    parser.add_argument("--llm-model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--llm-snippets", type=int, default=None, help="snippets given to the LLM-guided predictor")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args()
    args.quick = not args.full
    return args


def _build_llm(args):
    from components.llm import factory

    if args.llm_base_url:
        return factory.openai_compatible(model=args.llm_model, base_url=args.llm_base_url), args.llm_model
    return factory.embedded(), "embedded SmolLM2-135M-Instruct (Q4_1 dequantized)"


def main() -> None:
    args = _args()
    snippets = written_snippets() + package_function_snippets(DEFAULT_MODULES, 16 if args.quick else 60, seed=0)
    llm_count = args.llm_snippets or (10 if args.quick else 40)
    # The LLM subset: alternate written and package snippets so both kinds are represented.
    written = [s for s in snippets if s.origin == "written"]
    package = [s for s in snippets if s.origin != "written"]
    llm_subset = [s for pair in zip(written, package) for s in pair][:llm_count]
    llm, llm_name = _build_llm(args)
    predictors = {"as_is": AsIsPredictor(), "naive": NaivePredictor(), "rule_based": RuleBasedPredictor(),
                  "llm": LLMPredictor(llm, max_tokens=48, fallback=RuleBasedPredictor())}
    sandbox = Sandbox(SandboxLimits(wall_seconds=10, cpu_seconds=5))
    reports: dict[str, list[dict]] = {name: [] for name in predictors}
    llm_subset_ids = {s.id for s in llm_subset}
    start = time.perf_counter()
    for i, snippet in enumerate(snippets):
        for name, predictor in predictors.items():
            if name == "llm" and snippet.id not in llm_subset_ids:
                continue
            report = execute_snippet(snippet, predictor, sandbox).as_dict()
            report.update(origin=snippet.origin, expected_error=snippet.expected_error)
            reports[name].append(report)
        print(f"[{i + 1}/{len(snippets)}] {snippet.id}: " + ", ".join(
            f"{n}={reports[n][-1]['coverage']:.2f}" for n in predictors if reports[n] and reports[n][-1]["snippet_id"] == snippet.id),
            file=sys.stderr)
    results = {name: summarize(rows) for name, rows in reports.items()}
    on_subset = {name: summarize([r for r in rows if r["snippet_id"] in llm_subset_ids])
                 for name, rows in reports.items()}
    results["on_llm_subset"] = on_subset
    results["llm_model"] = llm_name
    results["llm_usage"] = llm.usage.as_dict()
    # Replies with no Python value fall back to the rule-based guess: count them, they are not the LLM's.
    results["llm_unparseable_replies"] = predictors["llm"].unparseable_replies
    results["seconds_total"] = time.perf_counter() - start
    results["per_snippet"] = reports
    results["note"] = ("coverage = distinct executed line markers / markers (best run); as-is runs the snippet as "
                       "it is. The LLM-guided figure is for the model named in llm_model on the LLM subset. "
                       "2 CPU cores shared with other work while measured.")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(predictors)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.38
    ax.bar([i - width / 2 for i in range(len(names))], [on_subset[n]["line_coverage"] for n in names], width,
           label=f"LLM subset ({len(llm_subset)} snippets)")
    ax.bar([i + width / 2 for i in range(len(names) - 1)], [results[n]["line_coverage"] for n in names[:-1]], width,
           label=f"all {len(snippets)} snippets")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("line coverage")
    ax.set_title(f"SelfPiCo line coverage by predictor (LLM: {llm_name})", fontsize=9)
    ax.legend(fontsize=8)
    targets = [
        target("rule_based_line_coverage", results["rule_based"]["line_coverage"], 0.5, ">="),
        target("llm_guided_line_coverage", results["llm"]["line_coverage"], 0.8, ">="),
    ]
    mode = argparse.Namespace(full=args.full, tracking_uri=args.tracking_uri, no_mlflow=args.no_mlflow)
    write_result("selfpico", results, targets, figure=fig, args=mode)


if __name__ == "__main__":
    main()
