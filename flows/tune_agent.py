"""`tune_agent`: SmolLM2-135M fine-tuned into compile_calls' planner, joiner and ReAct actor.

TinyAgent's recipe (the LLMCompiler authors' follow-up, which tuned 1.1B/7B models to plan) at
135M: both agents run with the scripted oracle on questions over other invented knowledge bases,
every LLM call becomes a chat (prompt without examples + the oracle's reply), the top layers are
fine-tuned on the replies -> the tuned layers in <work_dir>/<run_name>, registered in MLflow.
Then `mlsys run compile_calls llm.model_path=data/agent_model agent.few_shot=false`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from components.checks import at_least
from components.compiler.tuning import TranscriptConfig, TuneSettings, transcript_provenance, tuning_metrics
from mlsys.flow import FlowConfig, system_flow
from mlsys.tracking import Tracker
from tasks.llm import register_tuned, tune_on_chats
from tasks.tune_agent import collect_transcripts, smoke_plans


def _agent_tune_settings() -> TuneSettings:
    # float32 matmuls: the arithmetic of the model the compile_calls benchmark measured; bf16
    # (train.precision=auto) steps ~1.6x faster but is not yet measured on that benchmark
    return TuneSettings(precision="fp32")


@dataclass
class TuneAgentConfig(FlowConfig):
    transcripts: TranscriptConfig = field(default_factory=TranscriptConfig)
    train: TuneSettings = field(default_factory=_agent_tune_settings)
    threads: Optional[int] = None  # torch CPU threads; None: torch's default (all cores)
    run_name: str = "agent_model"  # -> <work_dir>/agent_model: what llm.model_path=data/agent_model loads
    registered_name: Optional[str] = "lm-agent"  # MLflow registry name; None: not registered
    smoke_questions: int = 2  # evaluation questions planned greedily after training (logged, not scored)

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("smoke_questions", self.smoke_questions, 0)
        if self.threads is not None:
            at_least("threads", self.threads, 1)


# The paper's claim this flow's summary metric measures (the suite's table, the run's summary).
CLAIM = "LLMCompiler-style tuned planner: lower reply loss after tuning"


@system_flow("tune_agent", TuneAgentConfig, order=59, summary_metric="final_reply_loss", claim=CLAIM)
def tune_agent(cfg: TuneAgentConfig, tracker: Tracker) -> dict[str, float]:
    """Fine-tune SmolLM2 on oracle transcripts of LLMCompiler and ReAct; register the tuned layers."""
    chats = collect_transcripts(cfg.transcripts)
    provenance = transcript_provenance(cfg.transcripts, chats)
    tuned = tune_on_chats(chats, cfg.train, str(cfg.work_path(cfg.run_name)), tracker, provenance, threads=cfg.threads)
    register_tuned(tuned["folder"], cfg.registered_name, tracker)
    if cfg.smoke_questions:
        tracker.log_text(smoke_plans(tuned["folder"], cfg.smoke_questions), "samples/plans.txt")
    minutes = tuned["summary"]["report"]["seconds"] / 60
    return {"transcripts": float(len(chats)), **tuning_metrics(tuned["summary"], tuned["folder"]), "minutes": minutes}
