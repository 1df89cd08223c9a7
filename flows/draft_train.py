"""`draft_train`: train the exit adapter of the early-exit draft (Kangaroo / LayerSkip style) on the
served target's own states over its replies, and register it for `serve` (`models.draft=exit_adapter`).

load the native target -> teacher replies (the teacher-reply corpus, or the target's greedy replies to
the teacher prompts, written now) -> the target's states at the exit layer and its last layer -> train the
adapter on the KL to the target's next-token distribution; held-out greedy agreement (the draft's
teacher-forced α) against the same layers with no adapter; the draft's cost c -> save to
<work_dir>/draft_train/<run_name>/ and register in MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from components.checks import ConfigError
from components.decoding.config import EXIT_ADAPTER_NAME
from components.decoding.exit_adapter import ExitAdapterSettings, ExitAdapterTraining, TeacherReplies
from mlsys.flow import FlowConfig, system_flow
from mlsys.tracking import Tracker
from tasks.draft_train import load_target, record_adapter, teacher_sequences, train_adapter


@dataclass
class DraftTrainConfig(FlowConfig):
    target_path: Optional[str] = None  # the native target's GGUF; None: the packaged SmolLM2 Q4_1 (what serve decodes)
    replies: TeacherReplies = field(default_factory=TeacherReplies)
    adapter: ExitAdapterSettings = field(default_factory=ExitAdapterSettings)
    train: ExitAdapterTraining = field(default_factory=ExitAdapterTraining)
    # the adapter -> <work_dir>/draft_train/<run_name>/ (exit_adapter: where serve's models.draft=exit_adapter looks)
    run_name: str = "exit_adapter"
    registered_name: str = EXIT_ADAPTER_NAME  # the MLflow model serve loads when that folder is absent

    def __post_init__(self) -> None:
        super().__post_init__()  # work_dir writable, device: checked before anything is trained
        for key in ("run_name", "registered_name"):
            if not getattr(self, key) or "/" in getattr(self, key):
                raise ConfigError(key, getattr(self, key), "must be a non-empty name without '/'")


CLAIM = "Kangaroo / LayerSkip: a shallow exit + a small adapter drafts cheaply with the target's own head"


@system_flow(
    "draft_train",
    DraftTrainConfig,
    order=25,
    summary_metric="val_agreement",
    quality="val_agreement_gain>=0",  # an adapter no better than no adapter never becomes @serving
    claim=CLAIM,
    measured="greedy agreement {val_agreement_layerskip:.3f} -> {val_agreement:.3f} at c {draft_cost_c:.2f}",
)
def draft_train(cfg: DraftTrainConfig, tracker: Tracker) -> dict[str, float]:
    """Train the early-exit draft's adapter on the target's states over its replies; register it in MLflow."""
    target = load_target(cfg.target_path)
    replies = teacher_sequences(target, cfg.replies, str(cfg.work_path("draft_train", "teacher_replies")))
    out_dir = str(cfg.work_path("draft_train", cfg.run_name))
    sequences, starts = replies["sequences"], replies["starts"]
    trained = train_adapter(target, sequences, starts, cfg.adapter, cfg.train, cfg.seed, out_dir, tracker)
    return record_adapter(tracker, trained, replies["source"], cfg.registered_name)
