"""Running the agents over ParallelQA questions and summarizing: shared by the flow and the benchmark.

Methods alternate question by question (LLMCompiler, then ReAct, then parallel function calling on
the same question), so a slow moment of a shared machine hits all. Summary per method: accuracy,
median/mean latency, LLM calls, tokens, tool calls, replan rate; and LLMCompiler's speedup over each
baseline (the baseline's median latency / LLMCompiler's).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from components.checks import at_least
from components.compiler.agents import AgentResult, LLMCompiler, ParallelFunctionCalling, ReActAgent
from components.compiler.fetching import Submit
from components.compiler.parallelqa import Question, is_correct
from components.compiler.prompts import EXAMPLES
from components.llm.base import LLM

METHODS = ("llmcompiler", "react", "parallel_fc")  # what build_agent builds
BASELINES = ("react", "parallel_fc")  # what LLMCompiler's speedup is reported against


@dataclass
class AgentSettings:
    max_replans: int = 1  # extra planning rounds the joiner may ask for (0: replanning off)
    planner_max_tokens: int = 320  # a 5-step plan is ~120 tokens; room for a Thought line
    joiner_max_tokens: int = 96  # Thought + Finish(answer)
    react_max_steps: int = 10  # the longest question needs 7 actions + Finish: 2 to spare
    react_step_max_tokens: int = 96  # one Thought + one Action
    parallel_fc_max_turns: int = 6  # the deepest plan has 3 waves of calls + Finish: 2 to spare
    parallel_fc_turn_max_tokens: int = 256  # one Thought + up to 8 Actions of ~25 tokens
    temperature: float = 0.0  # greedy: reproducible
    few_shot: bool = True  # worked examples in every prompt; False for a model tuned to the formats

    def __post_init__(self) -> None:
        at_least("agent.max_replans", self.max_replans, 0)
        for key in (
            "planner_max_tokens",
            "joiner_max_tokens",
            "react_max_steps",
            "react_step_max_tokens",
            "parallel_fc_max_turns",
            "parallel_fc_turn_max_tokens",
        ):
            at_least(f"agent.{key}", getattr(self, key), 1)
        at_least("agent.temperature", self.temperature, 0)


def build_agent(method: str, llm: LLM, tools: dict[str, str], submit: Submit, settings: AgentSettings):
    """The agent `method` names (one of METHODS), with the same examples and temperature for all."""
    common = {"temperature": settings.temperature, "examples": EXAMPLES if settings.few_shot else ()}
    if method == "llmcompiler":
        limits = {
            "max_replans": settings.max_replans,
            "planner_max_tokens": settings.planner_max_tokens,
            "joiner_max_tokens": settings.joiner_max_tokens,
        }
        return LLMCompiler(llm, tools, submit, **limits, **common)
    step_agents = {  # one LLM call per step, each answered by tool observations
        "react": (ReActAgent, settings.react_max_steps, settings.react_step_max_tokens),
        "parallel_fc": (ParallelFunctionCalling, settings.parallel_fc_max_turns, settings.parallel_fc_turn_max_tokens),
    }
    if method not in step_agents:
        raise ValueError(f"unknown method {method!r}; methods: {', '.join(METHODS)}")
    agent_cls, steps, step_tokens = step_agents[method]
    return agent_cls(llm, tools, submit, max_steps=steps, step_max_tokens=step_tokens, **common)


def evaluate(
    questions: Iterable[Question],
    agents: dict[str, object],
    on_result: Callable[[int, Question, AgentResult, bool], None] | None = None,
) -> list[dict]:
    """Run every agent on every question (alternating); return one row per (question, method)."""
    rows = []
    for i, question in enumerate(questions):
        for agent in agents.values():  # each result names its method
            result = agent.run(question.text)
            correct = is_correct(result.answer, question.answer, distractors=question.distractors)
            rows.append(
                {
                    "qid": question.qid,
                    "template": question.template,
                    "parallel": question.parallel,
                    "lookups": question.lookups,
                    "gold": question.answer,
                    "correct": correct,
                    **{k: v for k, v in result.as_dict().items() if k != "question"},
                }
            )
            if on_result:
                on_result(i, question, result, correct)
    return rows


def summarize(rows: list[dict], parallel_only: bool = False) -> dict:
    """Per-method figures and the ReAct/LLMCompiler latency ratio, from `evaluate` rows."""
    rows = [r for r in rows if r["parallel"]] if parallel_only else rows
    out: dict = {}
    for method in sorted({r["method"] for r in rows}):
        mine = [r for r in rows if r["method"] == method]
        latencies = [r["latency_s"] for r in mine]
        out[method] = {
            "questions": len(mine),
            "accuracy": sum(r["correct"] for r in mine) / len(mine),
            "latency_median_s": statistics.median(latencies),
            "latency_mean_s": statistics.fmean(latencies),
            "llm_calls_mean": statistics.fmean(r["llm_calls"] for r in mine),
            "prompt_tokens_mean": statistics.fmean(r["prompt_tokens"] for r in mine),
            "completion_tokens_mean": statistics.fmean(r["completion_tokens"] for r in mine),
            "tokens_mean": statistics.fmean(r["prompt_tokens"] + r["completion_tokens"] for r in mine),
            "tool_calls_mean": statistics.fmean(r["tool_calls"] for r in mine),
            "replan_rate": sum(r["replans"] > 0 for r in mine) / len(mine),
            "answered_rate": sum(r["answer"] is not None for r in mine) / len(mine),
        }
    for baseline in BASELINES:
        if "llmcompiler" not in out or baseline not in out:
            continue
        # against ReAct the keys carry no suffix (the comparison); against the others, _vs_<name>
        suffix = "" if baseline == "react" else f"_vs_{baseline}"
        out[f"speedup_median{suffix}"] = out[baseline]["latency_median_s"] / out["llmcompiler"]["latency_median_s"]
        pairs = _paired(rows, baseline)
        out[f"speedup_per_question_median{suffix}"] = (
            statistics.median(b / c for c, b in pairs) if pairs else float("nan")
        )
        out[f"accuracy_delta{suffix}"] = out["llmcompiler"]["accuracy"] - out[baseline]["accuracy"]
        out[f"token_ratio{suffix}"] = out[baseline]["tokens_mean"] / max(out["llmcompiler"]["tokens_mean"], 1e-9)
    return out


def _paired(rows: list[dict], baseline: str) -> list[tuple[float, float]]:
    """(LLMCompiler latency, baseline latency) per question both answered."""
    by_q: dict[str, dict[str, float]] = {}
    for r in rows:
        by_q.setdefault(r["qid"], {})[r["method"]] = r["latency_s"]
    return [
        (v["llmcompiler"], v[baseline])
        for v in by_q.values()
        if "llmcompiler" in v and baseline in v and v["llmcompiler"] > 0
    ]


def headline_metrics(summary: dict, rows: list[dict], methods: Iterable[str]) -> dict[str, float]:
    """The figures a run reports: per method accuracy, median latency, LLM calls, tokens, replan rate;
    LLMCompiler's speedup and accuracy difference against each baseline it ran beside."""
    metrics: dict[str, float] = {}
    for method in methods:
        for key in ("accuracy", "latency_median_s", "llm_calls_mean", "tokens_mean", "replan_rate"):
            metrics[f"{method}_{key}"] = summary[method][key]
    for suffix in ("", "_vs_parallel_fc"):
        if f"speedup_median{suffix}" in summary:
            metrics[f"speedup{suffix}"] = summary[f"speedup_median{suffix}"]
            metrics[f"accuracy_delta{suffix}"] = summary[f"accuracy_delta{suffix}"]
    metrics["questions"] = float(len({r["qid"] for r in rows}))
    metrics["latency_median_all_s"] = statistics.median(r["latency_s"] for r in rows)
    return metrics
