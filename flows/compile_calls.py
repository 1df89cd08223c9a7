"""`compile_calls`: LLMCompiler (plan -> parallel tool calls -> join/replan) vs ReAct on ParallelQA-style questions."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Optional

from components.checks import ConfigError, at_least
from components.compiler.evaluation import METHODS, AgentSettings
from mlsys.flow import FlowConfig, system_flow
from mlsys.tracking import Tracker
from tasks.compile_calls import ToolsConfig, prefect_submit, tool_descriptions, warm_up
from tasks.llm import LLMConfig, build_llm, log_llm_usage


@dataclass
class CompileCallsConfig(FlowConfig):
    llm: LLMConfig = field(default_factory=LLMConfig)
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    agent: AgentSettings = field(default_factory=AgentSettings)  # limits of both agents (reasons inline there)
    # alternated per question; "parallel_fc" adds OpenAI-style parallel function calling
    methods: list[str] = field(default_factory=lambda: ["llmcompiler", "react"])
    questions: int = 10  # first N of the 84 built-in questions (round-robin: 14 cover every template)
    question: Optional[str] = None  # ask this instead of the built-in set (no gold answer: not scored)

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [m for m in self.methods if m not in METHODS]
        if not self.methods or unknown:
            raise ConfigError("methods", self.methods, f"each must be one of {', '.join(METHODS)}")
        at_least("questions", self.questions, 1)


@system_flow(
    name="compile_calls",
    config=CompileCallsConfig,
    summary_metric="speedup",
    order=60,
)
def compile_calls(cfg: CompileCallsConfig, tracker: Tracker) -> dict[str, float]:
    """LLMCompiler vs ReAct: tool calls as Prefect tasks, plans and answers in MLflow."""
    from components.compiler.evaluation import build_agent, evaluate, summarize
    from components.compiler.parallelqa import Question, build_questions
    from components.tools import build_knowledge_base

    kb = build_knowledge_base(cfg.tools.kb_seed)
    if cfg.question:
        questions = [Question("custom-0", "custom", cfg.question, "", ("join()",), 0, True)]
    else:
        questions = build_questions(kb)[: cfg.questions]
    if not questions:
        raise ValueError(f"questions={cfg.questions}: nothing to ask")
    llm = build_llm(cfg.llm, base_dir=cfg.work_path("compile_calls"))
    tools, submit = tool_descriptions(cfg.tools), prefect_submit(cfg.tools)
    agents = {m: build_agent(m, llm, tools, submit, cfg.agent) for m in cfg.methods}
    warm_up(cfg.tools, calls=max(cfg.runner.max_workers, cfg.runner.n_workers))  # not measured
    tracker.log_dict(
        {
            "questions": [asdict(q) for q in questions],
            "knowledge_base": {e.name: e.attributes for e in kb.entities.values()},
        },
        "inputs.json",
    )

    def log_one(i, question, result, correct):
        tracker.log_metrics(
            {
                f"{result.method}.latency_s": result.latency_s,
                f"{result.method}.correct": float(correct),
                f"{result.method}.llm_calls": result.llm_calls,
            },
            step=i,
        )
        tracker.log_dict(result.as_dict(), f"traces/{question.qid}.{result.method}.json")
        print(
            f"[{question.qid}] {result.method}: {result.answer!r} (gold {question.answer!r}, "
            f"{'correct' if correct else 'wrong'}) in {result.latency_s:.2f} s, {result.llm_calls} LLM calls"
        )

    rows = evaluate(questions, agents, on_result=log_one)
    tracker.log_dict(rows, "results/answers.json")
    summary = summarize(rows)
    tracker.log_dict(summary, "results/summary.json")
    log_llm_usage(tracker, llm)
    metrics: dict[str, float] = {}
    for method in cfg.methods:
        for key in ("accuracy", "latency_median_s", "llm_calls_mean", "tokens_mean", "replan_rate"):
            metrics[f"{method}_{key}"] = summary[method][key]
    if "speedup_median" in summary:
        metrics["speedup"] = summary["speedup_median"]
        metrics["accuracy_delta"] = summary["accuracy_delta"]
    if "speedup_median_vs_parallel_fc" in summary:
        metrics["speedup_vs_parallel_fc"] = summary["speedup_median_vs_parallel_fc"]
        metrics["accuracy_delta_vs_parallel_fc"] = summary["accuracy_delta_vs_parallel_fc"]
    metrics["questions"] = float(len(questions))
    metrics["latency_median_all_s"] = statistics.median(r["latency_s"] for r in rows)
    return metrics
