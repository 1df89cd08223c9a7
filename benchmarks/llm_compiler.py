"""LLMCompiler vs ReAct (and vs parallel function calling) on the project's ParallelQA-style questions.

Up to three settings, same tools (knowledge-base search with a fixed latency, calculator, sandboxed Python)
and the same thread-pool executor:

1. scripted: an oracle stands in for the LLM (it writes each question's reference plan / each
   baseline's next step and reads the answer off the last observation), and every call takes as
   long as a served model's would (`ServedModelLatency`: time to first token + prefill per prompt
   token + decode per generated token, tokens counted with a real tokenizer; the same function for
   every method). The agents then make the same decisions, so the latency differences are the
   executor's: planning once and running independent calls in parallel vs one LLM round trip per
   call (ReAct) or per wave of independent calls (OpenAI-style parallel function calling, the
   paper's other baseline: every ready call in one turn, dispatched when the turn is complete).
   Sweeps over the search latency and the time to first token show how the speedups depend on
   them; they are also reported per number of independent lookups (1-8).
2. embedded: the real SmolLM2-135M-Instruct plans, joins and acts from few-shot prompts. It is a
   very weak model: its accuracy is reported as measured. It is slow on a shared CPU, so the
   setting stops starting new questions after `--embedded-budget-min` minutes and reports how
   many it covered.
3. embedded_tuned (with `--tuned-model DIR`): the same model fine-tuned on oracle transcripts of
   LLMCompiler and ReAct (the two it runs) over other knowledge bases (the tune_agent flow; TinyAgent's recipe), run
   with prompts without examples. Same budget; runs in its own process beside setting 2.

Methods alternate question by question; the first question of each setting is a warm-up that is
not counted. Accuracy: numbers within ±10%, else normalized match. Run: `python -m
benchmarks.llm_compiler --quick` (a few minutes) or `--full`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the Agg backend)

from benchmarks.common import parse_mode, target, write_result  # noqa: E402
from components.compiler.evaluation import AgentSettings, build_agent, evaluate, summarize  # noqa: E402
from components.compiler.fetching import ThreadSubmit  # noqa: E402
from components.compiler.parallelqa import build_questions  # noqa: E402
from components.compiler.scripted import ServedModelLatency, SimulatedServedLLM, parallelqa_oracle  # noqa: E402
from components.llm.embedded import EmbeddedLLM  # noqa: E402
from components.lm.smollm2 import load_tokenizer  # noqa: E402
from components.tools import ToolsConfig, build_knowledge_base  # noqa: E402

TOOLS = ToolsConfig()  # the flow's tools: search 0.5 s (a remote API's round trip), calculator 0.05 s
SEARCH_LATENCY_S = TOOLS.search_latency_s
GOAL_SPEEDUP = 3.0  # the issue: >= 3x lower latency than ReAct at equal accuracy on parallel questions
GOAL_QUESTIONS = 50  # the issue: >= 50 questions
EMBEDDED_SETTINGS = ("embedded", "embedded_tuned")


def _extra_args(argv):
    default = ServedModelLatency()
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--scripted-questions", type=int, default=None, help="default: 32 quick (2 per template), all 96 full"
    )
    parser.add_argument("--embedded-questions", type=int, default=None, help="default: 4 quick, 50 full")
    parser.add_argument(
        "--embedded-budget-min",
        type=float,
        default=None,
        help="stop starting embedded questions after this many minutes (default: 15 quick, 110 full)",
    )
    parser.add_argument(
        "--ttft", type=float, default=default.ttft_s, help="scripted LLM: fixed time to first token (s)"
    )
    parser.add_argument(
        "--prefill-per-token",
        type=float,
        default=default.prefill_s_per_token,
        help="scripted LLM: seconds per prompt token before the first token",
    )
    parser.add_argument(
        "--decode-per-token",
        type=float,
        default=default.decode_s_per_token,
        help="scripted LLM: seconds per generated token",
    )
    parser.add_argument("--skip-embedded", action="store_true", help="no setting 2 (the packaged model, few-shot)")
    parser.add_argument(
        "--tuned-model", default=None, help="a folder from the tune_agent flow: adds setting 3 (embedded_tuned)"
    )
    return parser.parse_known_args(argv)


SCRIPTED_METHODS = ("llmcompiler", "react", "parallel_fc")  # the oracle speaks every agent's format
TUNED_METHODS = ("llmcompiler", "react")  # the formats the tuned model was trained on (and the pair)


def _by_lookups(rows):
    """Median baseline/LLMCompiler latency ratio per question (and accuracies) per number of
    independent lookups: `speedup_median` over ReAct, `speedup_vs_parallel_fc_median` if it ran."""
    out = {}
    methods = sorted({r["method"] for r in rows})
    for n in sorted({r["lookups"] for r in rows}):
        pairs = {}
        for r in rows:
            if r["lookups"] == n:
                pairs.setdefault(r["qid"], {})[r["method"]] = r
        every = [p for p in pairs.values() if len(p) == len(methods)]
        out[str(n)] = {
            "questions": len(every),
            **{f"{m}_accuracy": sum(p[m]["correct"] for p in every) / len(every) for m in methods},
        }
        for baseline, key in (("react", "speedup_median"), ("parallel_fc", "speedup_vs_parallel_fc_median")):
            if baseline in methods:
                out[str(n)][key] = statistics.median(
                    p[baseline]["latency_s"] / p["llmcompiler"]["latency_s"] for p in every
                )
    return out


def _within(questions, budget_s, log):
    """The questions, until `budget_s` seconds have passed (None: all of them)."""
    start = time.perf_counter()
    for q in questions:
        if budget_s is not None and time.perf_counter() - start > budget_s:
            log(f"time budget of {budget_s / 60:.0f} min spent: stopping before {q.qid}")
            return
        yield q


def _run_setting(name, questions, llm, tools_cfg: ToolsConfig, settings, methods, budget_s=None, log=print):
    toolbox = tools_cfg.build()
    tools = toolbox.descriptions()
    submit = ThreadSubmit(toolbox, max_workers=8)
    agents = {m: build_agent(m, llm, tools, submit, settings) for m in methods}
    try:
        evaluate(questions[:1], agents)  # warm-up: model weights, sandbox, thread pool; not counted
        start = time.perf_counter()

        def progress(i, q, result, correct):
            log(
                f"[{name}] {q.qid} {result.method}: {result.answer!r:.40} gold={q.answer!r:.20} "
                f"{'ok' if correct else 'WRONG'} {result.latency_s:.2f}s calls={result.llm_calls}"
            )

        rows = evaluate(_within(questions[1:], budget_s, log), agents, on_result=progress)
    finally:
        submit.close()
    summary = summarize(rows)
    return {
        "questions": len({r["qid"] for r in rows}),
        "questions_asked": len(questions) - 1,
        "wall_s": time.perf_counter() - start,
        "tools": {"search_latency_s": tools_cfg.search_latency_s, "calculate_latency_s": tools_cfg.calculate_latency_s},
        "summary": summary,
        "summary_parallel_questions": summarize(rows, parallel_only=True),
        "speedup_by_lookups": _by_lookups(rows),
    }, rows


def _embedded_setting(name, questions, tools_cfg, settings, budget_min, model_path=None):
    """SmolLM2-135M (or its tuned copy at `model_path`) really planning, joining and acting (run in
    a worker process)."""
    model = EmbeddedLLM(threads=1, model_path=model_path)  # see conf/llm/embedded.yaml: 1 thread on a shared CPU
    result, rows = _run_setting(
        name,
        questions,
        model,
        tools_cfg,
        settings,
        TUNED_METHODS,
        budget_s=60 * budget_min,
        log=lambda line: print(line, flush=True),
    )
    description = "SmolLM2-135M-Instruct (transformers, fp32, CPU, 1 thread, greedy)"
    if model_path:
        tuning = json.loads((Path(model_path) / "tuning.json").read_text())
        description += (
            f", fine-tuned on {sum(tuning['transcripts'].values())} oracle transcripts over knowledge "
            f"bases {tuning['kb_seeds']} (tune_agent), prompts without examples"
        )
        result["tuning"] = {k: tuning[k] for k in ("kb_seeds", "transcripts", "tokens", "settings", "date")}
    result.update(
        model=description,
        few_shot=settings.few_shot,
        budget_min=budget_min,
        prefix_cache={"hits": model.prefix_cache.hits, "reused_tokens": model.prefix_cache.reused_tokens},
    )
    return result, rows


def _sweep_point(res):
    point = {
        "speedup_median": res["summary"]["speedup_median"],
        "speedup_parallel_median": res["summary_parallel_questions"]["speedup_median"],
        "speedup_by_lookups": {n: v["speedup_median"] for n, v in res["speedup_by_lookups"].items()},
    }
    if "speedup_median_vs_parallel_fc" in res["summary"]:
        point["speedup_vs_parallel_fc_parallel_median"] = res["summary_parallel_questions"][
            "speedup_median_vs_parallel_fc"
        ]
    for method in SCRIPTED_METHODS:
        if method in res["summary"]:
            point[f"{method}_latency_median_s"] = res["summary"][method]["latency_median_s"]
    return point


def main(argv=None) -> None:
    extra, rest = _extra_args(sys.argv[1:] if argv is None else argv)
    args = parse_mode(__doc__.split("\n")[0], rest)
    full = bool(args.full)
    questions = build_questions(build_knowledge_base(0))
    templates = len({q.template for q in questions})
    settings = AgentSettings()
    latency = ServedModelLatency(extra.ttft, extra.prefill_per_token, extra.decode_per_token)
    tokenizer = load_tokenizer()
    results: dict = {
        "note": "shared 2-core machine (other engineers' jobs running): compare ratios within a "
        "setting, not absolute seconds across runs",
        "settings": {
            "agent": vars(settings),
            "search_latency_s": TOOLS.search_latency_s,
            "calculate_latency_s": TOOLS.calculate_latency_s,
            "scripted_llm": asdict(latency),
        },
        "question_set": _question_set(questions, templates),
    }
    all_rows = {}

    def oracle(lat):
        return SimulatedServedLLM(parallelqa_oracle, lat, tokenizer=tokenizer)

    # The embedded setting is CPU-bound (one torch thread) and the scripted one mostly sleeps
    # (simulated model and tool latency), so they run at the same time, in separate processes:
    # the full run then fits the shared machine's afternoon. Within each setting the methods
    # still alternate question by question, so whatever the other process costs hits both.
    embedded_pool, embedded_runs = _start_embedded(extra, settings, questions, full)

    # 1. scripted plans: the executor's speedup
    n_scripted = extra.scripted_questions or (len(questions) if full else 2 * templates)
    results["scripted"], all_rows["scripted"] = _run_setting(
        "scripted", questions[: n_scripted + 1], oracle(latency), TOOLS, settings, SCRIPTED_METHODS
    )
    # 1b. sensitivity (one question per template + the warm-up): tool latency and time to first token
    results.update(_sensitivity(questions[: templates + 1], all_rows["scripted"], oracle, latency, settings, full))

    # 2./3. the embedded model end to end: each in its own process, started first and collected last
    for name, run in embedded_runs.items():
        results[name], all_rows[name] = run.result()
    if embedded_pool is not None:
        embedded_pool.shutdown()
    results["rows"] = {k: [{key: r[key] for key in ROW_KEYS} for r in rows] for k, rows in all_rows.items()}
    write_result("llm_compiler", results, _targets(results), figure=_plot(results), args=args)


ROW_KEYS = (
    "qid",
    "method",
    "lookups",
    "answer",
    "gold",
    "correct",
    "latency_s",
    "llm_calls",
    "prompt_tokens",
    "completion_tokens",
    "tool_calls",
    "replans",
    "errors",
)  # what the result file keeps of each answer


def _question_set(questions, templates: int) -> dict:
    by_lookups = {str(n): sum(q.lookups == n for q in questions) for n in sorted({q.lookups for q in questions})}
    return {
        "questions": len(questions),
        "templates": templates,
        "by_lookups": by_lookups,
        "parallel": sum(q.parallel for q in questions),
    }


def _start_embedded(extra, settings: AgentSettings, questions, full: bool):
    """Settings 2 and 3 started in worker processes: (the pool or None, setting name -> future)."""
    specs = {}  # setting name -> (model folder, agent settings)
    if not extra.skip_embedded:
        specs["embedded"] = (None, settings)
    if extra.tuned_model:
        specs["embedded_tuned"] = (extra.tuned_model, replace(settings, few_shot=False))
    if not specs:
        return None, {}
    n_embedded = extra.embedded_questions or (GOAL_QUESTIONS if full else 4)
    budget_min = extra.embedded_budget_min or (110 if full else 15)
    pool = ProcessPoolExecutor(len(specs), mp_context=multiprocessing.get_context("spawn"))
    runs = {
        name: pool.submit(
            _embedded_setting, name, questions[: n_embedded + 1], TOOLS, agent_settings, budget_min, model_path
        )
        for name, (model_path, agent_settings) in specs.items()
    }
    return pool, runs


def _sensitivity(subset, main_rows, oracle, latency: ServedModelLatency, settings: AgentSettings, full: bool) -> dict:
    """The speedups with another search latency or time to first token, on one question per template;
    the main setting's point is its own rows on the same questions."""
    sweep_search = {str(SEARCH_LATENCY_S): None}
    for search in (0.1, 1.0) if full else (1.0,):
        tools = replace(TOOLS, search_latency_s=search)
        res, _ = _run_setting(f"sweep-search-{search}", subset, oracle(latency), tools, settings, SCRIPTED_METHODS)
        sweep_search[str(search)] = _sweep_point(res)
    sweep_ttft = {str(latency.ttft_s): None}
    for ttft in (0.05, 1.0) if full else (1.0,):
        res, _ = _run_setting(
            f"sweep-ttft-{ttft}", subset, oracle(replace(latency, ttft_s=ttft)), TOOLS, settings, SCRIPTED_METHODS
        )
        sweep_ttft[str(ttft)] = _sweep_point(res)
    main_subset = [r for r in main_rows if r["qid"] in {q.qid for q in subset[1:]}]
    main_point = _sweep_point(
        {
            "summary": summarize(main_subset),
            "summary_parallel_questions": summarize(main_subset, parallel_only=True),
            "speedup_by_lookups": _by_lookups(main_subset),
        }
    )
    sweep_search[str(SEARCH_LATENCY_S)] = sweep_ttft[str(latency.ttft_s)] = main_point
    return {
        "scripted_sweep_search_latency": dict(sorted(sweep_search.items(), key=lambda kv: float(kv[0]))),
        "scripted_sweep_ttft": dict(sorted(sweep_ttft.items(), key=lambda kv: float(kv[0]))),
    }


def _targets(results: dict) -> list[dict]:
    targets = []
    for name in ("scripted", *EMBEDDED_SETTINGS):
        if name not in results:
            continue
        s = results[name]["summary_parallel_questions"]
        targets.append(target(f"{name}_questions", results[name]["questions"], GOAL_QUESTIONS, ">="))
        targets.append(target(f"{name}_speedup_parallel_questions", s["speedup_median"], GOAL_SPEEDUP, ">="))
        targets.append(target(f"{name}_accuracy_llmcompiler_minus_react", s["accuracy_delta"], 0.0, ">="))
    return targets


def _plot(results):
    settings = [k for k in ("scripted", *EMBEDDED_SETTINGS) if k in results]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    width = 0.27
    for i, method in enumerate(SCRIPTED_METHODS):
        ran = [x for x, k in enumerate(settings) if method in results[k]["summary"]]
        axes[0].bar(
            [x + i * width for x in ran],
            [results[settings[x]]["summary"][method]["latency_median_s"] for x in ran],
            width,
            label=method,
        )
        axes[1].bar(
            [x + i * width for x in ran],
            [results[settings[x]]["summary"][method]["accuracy"] for x in ran],
            width,
            label=method,
        )
    for ax, title in ((axes[0], "median latency per question (s)"), (axes[1], "accuracy")):
        ax.set_xticks([x + width for x in range(len(settings))], settings)
        ax.set_title(title)
        ax.legend()
    by_lookups = results["scripted"]["speedup_by_lookups"]
    xs = [int(n) for n in by_lookups]
    axes[2].plot(xs, [v["speedup_median"] for v in by_lookups.values()], "o-", label="scripted, main setting")
    if all("speedup_vs_parallel_fc_median" in v for v in by_lookups.values()):
        axes[2].plot(
            xs,
            [v["speedup_vs_parallel_fc_median"] for v in by_lookups.values()],
            "o-",
            color="#777",
            label="scripted: parallel function calling / LLMCompiler",
        )
    main_values = {"search": str(SEARCH_LATENCY_S), "TTFT": str(results["settings"]["scripted_llm"]["ttft_s"])}
    for label, sweep in (
        ("search", results["scripted_sweep_search_latency"]),
        ("TTFT", results["scripted_sweep_ttft"]),
    ):
        for value, point in sweep.items():
            if value == main_values[label]:
                continue  # the main setting's curve, already drawn from all its questions
            ns = sorted(point["speedup_by_lookups"], key=int)
            axes[2].plot(
                [int(n) for n in ns],
                [point["speedup_by_lookups"][n] for n in ns],
                ".--",
                lw=0.8,
                label=f"{label} {value} s (1 q/template)",
            )
    for name, marker in zip(EMBEDDED_SETTINGS, ("x:", "s-")):
        if name in results:
            emb = results[name]["speedup_by_lookups"]
            axes[2].plot([int(n) for n in emb], [v["speedup_median"] for v in emb.values()], marker, label=name)
    axes[2].axhline(GOAL_SPEEDUP, color="grey", lw=0.8, ls=":", label="target 3x")
    axes[2].set_xlabel("independent lookups per question")
    axes[2].set_title("baseline / LLMCompiler latency (median; ReAct unless named)")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
