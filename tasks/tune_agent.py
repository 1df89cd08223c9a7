"""Prefect tasks of the `tune_agent` flow: oracle transcripts and a smoke plan (the tuning itself is
`tasks.llm.tune_on_chats`, shared with tune_selfpico)."""

from __future__ import annotations

import random

from prefect import get_run_logger, task

from components.compiler.parallelqa import build_questions
from components.compiler.prompts import planner_messages
from components.compiler.tuning import (
    EVAL_KB_SEED,
    TranscriptConfig,
    count_kinds,
    oracle_transcripts,
    subsample_react,
)
from components.llm.embedded import EmbeddedLLM
from components.tools import build_knowledge_base, build_toolbox


@task(name="agent-transcripts")
def collect_transcripts(spec: TranscriptConfig) -> list[list[dict[str, str]]]:
    """Every LLM call LLMCompiler and ReAct make with the oracle on the questions, as chats (prompt
    without examples + reply); questions naming an evaluation entity are dropped."""
    eval_names = [e.name for e in build_knowledge_base(EVAL_KB_SEED).entities.values()]
    chats = oracle_transcripts(spec.kb_seeds, per_template=spec.per_template, few_shot=False, exclude_names=eval_names)
    if spec.react_steps is not None:
        chats = subsample_react(chats, spec.react_steps, random.Random(0))
    get_run_logger().info("%d transcripts %s", len(chats), count_kinds(chats))
    return chats


@task(name="agent-smoke-plans")
def smoke_plans(folder: str, questions: int) -> str:
    """The tuned model planning the first evaluation questions greedily (logged, not scored: the
    compile_calls flow and benchmark score it)."""
    llm = EmbeddedLLM(model_path=folder, prefix_cache_entries=0)
    tools = [t.description for t in build_toolbox(EVAL_KB_SEED).tools.values()]
    out = []
    for q in build_questions(build_knowledge_base(EVAL_KB_SEED))[:questions]:
        text = llm.chat(planner_messages(q.text, tools, examples=()), max_tokens=200, stop=["<END_OF_PLAN>"]).text
        out.append(f"--- {q.text}\n{text}")
    return "\n".join(out)
