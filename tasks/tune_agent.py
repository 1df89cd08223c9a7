"""Prefect tasks of the `tune_agent` flow: oracle transcripts, the fine-tuning run, a smoke plan."""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from prefect import get_run_logger, task

from mlsys.tracking import Tracker

EVAL_KB_SEED = 0  # the knowledge base compile_calls and the benchmark ask about: never tuned on


@dataclass
class TranscriptConfig:
    """Which questions the oracle answers to make the training chats."""

    kb_seeds: list[int] = field(default_factory=lambda: list(range(1, 9)))  # other invented names and numbers
    per_template: int = 2  # questions per template and knowledge base: 16 x 2 x 8 = 256 questions
    react_steps: Optional[int] = None  # ReAct calls kept per question (Finish always); None: all of them


@task(name="agent-transcripts")
def collect_transcripts(spec: TranscriptConfig) -> list[list[dict[str, str]]]:
    """Every LLM call LLMCompiler and ReAct make with the oracle on the questions, as chats (prompt
    without examples + reply); questions naming an evaluation entity are dropped."""
    from components.compiler.tuning import count_kinds, oracle_transcripts, subsample_react
    from components.tools import build_knowledge_base

    if EVAL_KB_SEED in spec.kb_seeds:
        raise ValueError(
            f"transcripts.kb_seeds must not include {EVAL_KB_SEED}: it is the knowledge base "
            f"compile_calls and the benchmark evaluate on"
        )
    if not spec.kb_seeds:
        raise ValueError("transcripts.kb_seeds is empty: nothing to tune on")
    eval_names = [e.name for e in build_knowledge_base(EVAL_KB_SEED).entities.values()]
    chats = oracle_transcripts(spec.kb_seeds, per_template=spec.per_template, few_shot=False, exclude_names=eval_names)
    if spec.react_steps is not None:
        chats = subsample_react(chats, spec.react_steps, random.Random(0))
    get_run_logger().info("%d transcripts %s", len(chats), count_kinds(chats))
    return chats


@task(name="agent-tune")
def tune_agent_model(
    chats: list, spec: TranscriptConfig, settings: Any, out_dir: str, tracker: Tracker, log_every: int = 5
) -> dict:
    """Fine-tune SmolLM2's top layers on the chats' replies; save the tuned layers to `out_dir`
    (with tuning.json: where the chats came from, settings, loss curve); metrics to MLflow every
    `log_every` steps."""
    from components.compiler.tuning import count_kinds

    provenance = {
        "kb_seeds": list(spec.kb_seeds),
        "per_template": spec.per_template,
        "react_steps_per_question": spec.react_steps or "all",
        "transcripts": count_kinds(chats),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return tune_and_save(chats, settings, out_dir, tracker, provenance, log_every)


def tune_and_save(chats: list, settings: Any, out_dir: str, tracker: Tracker, provenance: dict, log_every: int) -> dict:
    """The tuning both tune flows share: the top layers tuned on the chats' replies, metrics to MLflow
    every `log_every` steps, the tuned tensors and tuning.json (provenance, settings, loss curve) saved."""
    from components.compiler.tuning import TuneSettings, tune_smollm2_on_chats

    settings = TuneSettings(**asdict(settings))

    def on_step(step: int, metrics: dict) -> None:
        if step % log_every == 0:
            tracker.log_metrics(metrics, step=step)

    tuned = tune_smollm2_on_chats(chats, settings, out_dir, log=get_run_logger().info, on_step=on_step)
    report, folder = tuned["report"], tuned["folder"]
    summary = {
        "base": tuned["base"],
        **provenance,
        "tokens": tuned["tokens"],
        "reply_tokens": tuned["reply_tokens"],
        "settings": asdict(settings),
        "report": {**asdict(report), "losses": [round(x, 4) for x in report.losses]},
    }
    (folder / "tuning.json").write_text(json.dumps(summary, indent=1))
    return {"folder": str(folder), "summary": summary}


@task(name="agent-smoke-plans")
def smoke_plans(folder: str, questions: int) -> str:
    """The tuned model planning the first evaluation questions greedily (logged, not scored: the
    compile_calls flow and benchmark score it)."""
    from components.compiler.parallelqa import build_questions
    from components.compiler.prompts import planner_messages
    from components.llm.embedded import EmbeddedLLM
    from components.tools import build_knowledge_base, build_toolbox

    llm = EmbeddedLLM(model_path=folder, prefix_cache_entries=0)
    tools = [t.description for t in build_toolbox(EVAL_KB_SEED).tools.values()]
    out = []
    for q in build_questions(build_knowledge_base(EVAL_KB_SEED))[:questions]:
        text = llm.chat(planner_messages(q.text, tools, examples=()), max_tokens=200, stop=["<END_OF_PLAN>"]).text
        out.append(f"--- {q.text}\n{text}")
    return "\n".join(out)


def folder_size_mb(folder: str) -> float:
    return sum(p.stat().st_size for p in Path(folder).iterdir()) / 2**20
