"""LLMCompiler vs ReAct on the project's ParallelQA-style questions, side by side.

Two settings, same tools (knowledge-base search with a fixed latency, calculator, sandboxed Python)
and the same thread-pool executor:

1. scripted: an oracle stands in for the LLM (it writes each question's reference plan / ReAct's
   next step and reads the answer off the last observation) at a simulated speed of a served model
   (`--ttft` seconds per call + `--token-delay` per word). Both agents then make the same decisions,
   so the latency difference is the executor's: planning once and running independent calls in
   parallel vs one LLM round trip per call. A sweep over the search latency shows how that
   speedup depends on tool latency.
2. embedded: the real SmolLM2-135M-Instruct plans, joins and acts. It is a very weak model: its
   accuracy is reported as measured.

Methods alternate question by question; the first question of each setting is a warm-up that is
not counted. Accuracy: numbers within ±10%, else normalized match. Run: `python -m
benchmarks.llm_compiler --quick` (a few minutes) or `--full`.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from benchmarks.common import parse_mode, target, write_result

SEARCH_LATENCY_S = 0.5  # a remote search API's round trip (the paper's tools are web/Wikipedia calls)
CALCULATE_LATENCY_S = 0.05


def _extra_args(argv):
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--scripted-questions", type=int, default=None, help="default: 30 quick, 60 full")
    parser.add_argument("--embedded-questions", type=int, default=None, help="default: 4 quick, 12 full")
    parser.add_argument("--ttft", type=float, default=0.2, help="scripted LLM: seconds before the first token")
    parser.add_argument("--token-delay", type=float, default=0.02, help="scripted LLM: seconds per word (~50 tok/s)")
    parser.add_argument("--skip-embedded", action="store_true")
    return parser.parse_known_args(argv)


def _agents(llm, tools, submit, settings):
    from components.compiler.evaluation import build_agent

    return {m: build_agent(m, llm, tools, submit, settings) for m in ("llmcompiler", "react")}


def _by_lookups(rows):
    """Median ReAct/LLMCompiler latency ratio per number of independent lookups."""
    out = {}
    for n in sorted({r["lookups"] for r in rows}):
        pairs = {}
        for r in rows:
            if r["lookups"] == n:
                pairs.setdefault(r["qid"], {})[r["method"]] = r["latency_s"]
        ratios = [p["react"] / p["llmcompiler"] for p in pairs.values() if len(p) == 2]
        out[str(n)] = {"questions": len(ratios), "speedup_median": statistics.median(ratios)}
    return out


def _run_setting(name, questions, llm, toolbox_kwargs, settings, log=print):
    from components.compiler.evaluation import evaluate, summarize
    from components.compiler.fetching import ThreadSubmit
    from components.tools import build_toolbox

    toolbox = build_toolbox(0, **toolbox_kwargs)
    tools = {n: t.description for n, t in toolbox.tools.items()}
    submit = ThreadSubmit(toolbox, max_workers=8)
    agents = _agents(llm, tools, submit, settings)
    try:
        evaluate(questions[:1], agents)  # warm-up: model weights, sandbox, thread pool; not counted
        start = time.perf_counter()

        def progress(i, q, result, correct):
            log(f"[{name}] {q.qid} {result.method}: {result.answer!r:.40} gold={q.answer!r:.20} "
                f"{'ok' if correct else 'WRONG'} {result.latency_s:.2f}s calls={result.llm_calls}")

        rows = evaluate(questions[1:], agents, on_result=progress)
    finally:
        submit.close()
    summary = summarize(rows)
    return {
        "questions": len(questions) - 1,
        "wall_s": time.perf_counter() - start,
        "tools": toolbox_kwargs,
        "summary": summary,
        "summary_parallel_questions": summarize(rows, parallel_only=True),
        "speedup_by_lookups": _by_lookups(rows),
    }, rows


def main(argv=None) -> None:
    extra, rest = _extra_args(sys.argv[1:] if argv is None else argv)
    args = parse_mode(__doc__.split("\n")[0], rest)
    full = bool(args.full)
    from components.compiler.evaluation import AgentSettings
    from components.compiler.parallelqa import build_questions
    from components.compiler.scripted import parallelqa_oracle
    from components.llm import ScriptedLLM
    from components.tools import build_knowledge_base

    questions = build_questions(build_knowledge_base(0))
    settings = AgentSettings()
    base_tools = {"search_latency_s": SEARCH_LATENCY_S, "calculate_latency_s": CALCULATE_LATENCY_S}
    results: dict = {"note": "shared 2-core machine (other engineers' jobs running): compare ratios within a "
                             "setting, not absolute seconds across runs",
                     "settings": {"agent": vars(settings), "search_latency_s": SEARCH_LATENCY_S,
                                  "calculate_latency_s": CALCULATE_LATENCY_S,
                                  "scripted_llm": {"ttft_s": extra.ttft, "token_delay_s": extra.token_delay}}}
    all_rows = {}

    # 1. scripted plans: the executor's speedup
    n_scripted = extra.scripted_questions or (60 if full else 30)
    oracle = ScriptedLLM(parallelqa_oracle, delay_s=extra.ttft, token_delay_s=extra.token_delay)
    results["scripted"], all_rows["scripted"] = _run_setting(
        "scripted", questions[: n_scripted + 1], oracle, base_tools, settings)

    # 1b. how the executor's speedup depends on tool latency (one question per template)
    sweep = {}
    for latency in ((0.1, 0.5, 1.0) if full else (0.1, 1.0)):
        oracle = ScriptedLLM(parallelqa_oracle, delay_s=extra.ttft, token_delay_s=extra.token_delay)
        res, _ = _run_setting(f"sweep-{latency}", questions[:11], oracle,
                              {**base_tools, "search_latency_s": latency}, settings)
        sweep[str(latency)] = {"speedup_median": res["summary"]["speedup_median"],
                               "speedup_parallel_median": res["summary_parallel_questions"]["speedup_median"],
                               "llmcompiler_latency_median_s": res["summary"]["llmcompiler"]["latency_median_s"],
                               "react_latency_median_s": res["summary"]["react"]["latency_median_s"]}
    results["scripted_latency_sweep"] = sweep

    # 2. the embedded model end to end
    if not extra.skip_embedded:
        from components.llm.embedded import EmbeddedLLM

        n_embedded = extra.embedded_questions or (12 if full else 4)
        model = EmbeddedLLM(threads=1)  # see conf/llm/embedded.yaml: 1 thread on a shared CPU
        results["embedded"], all_rows["embedded"] = _run_setting(
            "embedded", questions[: n_embedded + 1], model, base_tools, settings)
        results["embedded"]["model"] = "SmolLM2-135M-Instruct (transformers, fp32, CPU, greedy)"

    targets = []
    s = results["scripted"]["summary_parallel_questions"]
    targets.append(target("scripted_speedup_parallel_questions", s["speedup_median"], 3.0, ">="))
    targets.append(target("scripted_accuracy_llmcompiler_minus_react", s["accuracy_delta"], 0.0, ">="))
    if "embedded" in results:
        e = results["embedded"]["summary_parallel_questions"]
        targets.append(target("embedded_speedup_parallel_questions", e["speedup_median"], 3.0, ">="))
        targets.append(target("embedded_accuracy_llmcompiler_minus_react", e["accuracy_delta"], 0.0, ">="))
    results["rows"] = {k: [{key: r[key] for key in ("qid", "method", "answer", "gold", "correct", "latency_s",
                                                     "llm_calls", "prompt_tokens", "completion_tokens",
                                                     "tool_calls", "replans", "errors")} for r in rows]
                       for k, rows in all_rows.items()}
    write_result("llm_compiler", results, targets, figure=_plot(results), args=args)


def _plot(results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = [k for k in ("scripted", "embedded") if k in results]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    width = 0.35
    for i, method in enumerate(("llmcompiler", "react")):
        values = [results[k]["summary"][method]["latency_median_s"] for k in settings]
        axes[0].bar([x + i * width for x in range(len(settings))], values, width, label=method)
        accs = [results[k]["summary"][method]["accuracy"] for k in settings]
        axes[1].bar([x + i * width for x in range(len(settings))], accs, width, label=method)
    for ax, title in ((axes[0], "median latency per question (s)"), (axes[1], "accuracy")):
        ax.set_xticks([x + width / 2 for x in range(len(settings))], settings)
        ax.set_title(title)
        ax.legend()
    sweep = results["scripted_latency_sweep"]
    xs = [float(k) for k in sweep]
    axes[2].plot(xs, [v["speedup_median"] for v in sweep.values()], "o-", label="all questions")
    axes[2].plot(xs, [v["speedup_parallel_median"] for v in sweep.values()], "s--", label="parallel questions")
    axes[2].axhline(3.0, color="grey", lw=0.8, ls=":", label="target 3x")
    axes[2].set_xlabel("search latency (s)")
    axes[2].set_title("scripted: ReAct / LLMCompiler latency")
    axes[2].legend()
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
