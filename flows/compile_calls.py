"""`compile_calls`: LLMCompiler (plan -> parallel tool calls -> join/replan) vs ReAct on ParallelQA-style questions."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Optional

from prefect import unmapped

from components.checks import ConfigError, at_least
from components.compiler.agents import AgentResult
from components.compiler.evaluation import METHODS, AgentSettings, build_agent, evaluate, headline_metrics, summarize
from components.compiler.parallelqa import Question, build_questions
from components.llm.base import log_llm_usage
from components.llm.config import LLMConfig
from components.llm.factory import build_llm
from components.tools import ToolsConfig, build_knowledge_base, toolbox_for
from mlsys.flow import FlowConfig, system_flow
from mlsys.tracking import Tracker
from tasks.compile_calls import call_tool


@dataclass
class CompileCallsConfig(FlowConfig):
    llm: LLMConfig = field(default_factory=LLMConfig)
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    agent: AgentSettings = field(default_factory=AgentSettings)  # limits of both agents (reasons inline there)
    # alternated per question on the same tools; "parallel_fc" adds OpenAI-style parallel function calling
    methods: list[str] = field(default_factory=lambda: ["llmcompiler", "react"])
    questions: int = 10  # first N of the 96 built-in questions (round-robin: 16 cover every template)
    question: Optional[str] = None  # ask this instead of the built-in set (no gold answer: not scored)

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [m for m in self.methods if m not in METHODS]
        if not self.methods or unknown:
            raise ConfigError("methods", self.methods, f"each must be one of {', '.join(METHODS)}")
        at_least("questions", self.questions, 1)


CLAIM = (
    "LLMCompiler: up to 3.7x lower latency than ReAct"  # the paper's claim this flow's summary measures (suite table)
)


@system_flow("compile_calls", CompileCallsConfig, summary_metric="speedup", order=60, claim=CLAIM)
def compile_calls(cfg: CompileCallsConfig, tracker: Tracker) -> dict[str, float]:
    """LLMCompiler vs ReAct: tool calls as Prefect tasks, plans and answers in MLflow."""
    kb = build_knowledge_base(cfg.tools.kb_seed)
    questions = _questions(cfg, kb)
    llm = build_llm(cfg.llm, base_dir=cfg.work_path("compile_calls"))
    tools, submit = toolbox_for(cfg.tools).descriptions(), partial(call_tool.submit, tools=cfg.tools)
    agents = {m: build_agent(m, llm, tools, submit, cfg.agent) for m in cfg.methods}
    _warm_up_workers(cfg)
    entities = {e.name: e.attributes for e in kb.entities.values()}
    tracker.log_dict({"questions": [asdict(q) for q in questions], "knowledge_base": entities}, "inputs.json")
    rows = evaluate(questions, agents, on_result=partial(_log_answer, tracker))
    summary = summarize(rows)
    tracker.log_dict(rows, "results/answers.json")
    tracker.log_dict(summary, "results/summary.json")
    log_llm_usage(tracker, llm)
    return headline_metrics(summary, rows, cfg.methods)


def _warm_up_workers(cfg: CompileCallsConfig) -> None:
    """Start the runner's workers and build their tools before anything is timed: a fresh Dask cluster
    otherwise charges its start-up to the first question."""
    workers = ["calculate"] * max(cfg.runner.max_workers, cfg.runner.n_workers)
    warm_up = call_tool.with_options(task_run_name="warm-up")
    warm_up.map(workers, unmapped(("1 + 1",)), unmapped({}), unmapped(cfg.tools)).result()


def _questions(cfg: CompileCallsConfig, kb) -> list[Question]:
    if cfg.question:
        return [Question("custom-0", "custom", cfg.question, "", ("join()",), 0, True)]
    return build_questions(kb)[: cfg.questions]


def _log_answer(tracker: Tracker, i: int, question: Question, result: AgentResult, correct: bool) -> None:
    """Each answer as it comes: step metrics, its trace, one console line."""
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
