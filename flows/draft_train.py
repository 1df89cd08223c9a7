"""`draft_train`: train a draft that reads the served target itself, on the target's own states over its
replies, and register it for `serve`: the early-exit draft's adapter (Kangaroo / LayerSkip style,
`draft=exit_adapter`, serve's `models.draft=exit_adapter`) or the EAGLE-style head (`draft=eagle_head`,
serve's `models.draft=eagle_head`).

load the native target -> teacher replies (the teacher-reply corpus, or the target's greedy replies to
the teacher prompts, written now) -> the target's states over them -> train the draft's module (the
adapter: KL to the target's next-token distribution; the EAGLE head: smooth L1 on the target's next
state + cross-entropy); held-out greedy agreement (the draft's teacher-forced α) against the untrained
module; the draft's cost c -> save to <work_dir>/draft_train/<run_name>/ and register in MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from components.checks import ConfigError, one_of
from components.decoding.config import EAGLE_HEAD_NAME, EXIT_ADAPTER_NAME
from components.decoding.draft_data import DraftTraining, TeacherReplies
from components.decoding.eagle_head import EagleHeadSettings
from components.decoding.exit_adapter import ExitAdapterSettings
from mlsys.flow import FlowConfig, system_flow
from mlsys.tracking import Tracker
from tasks.draft_train import load_target, record_draft, teacher_sequences, train_adapter, train_eagle

# per draft: the MLflow model it is registered as (serve loads it when the folder is absent), its artifact
DRAFTS = {"exit_adapter": (EXIT_ADAPTER_NAME, "adapter"), "eagle_head": (EAGLE_HEAD_NAME, "eagle_head")}


@dataclass
class DraftChoice:
    """conf/draft/*.yaml: which draft the flow trains."""

    # exit_adapter: the target's first `adapter.layers` layers + a small adapter (`adapter.*`);
    # eagle_head: one decoder layer over the target's last hidden state and the next token (`eagle.*`)
    kind: str = "exit_adapter"

    def __post_init__(self) -> None:
        one_of("draft.kind", self.kind, tuple(DRAFTS))


@dataclass
class DraftTrainConfig(FlowConfig):
    target_path: Optional[str] = None  # the native target's GGUF; None: the packaged SmolLM2 Q4_1 (what serve decodes)
    draft: DraftChoice = field(default_factory=DraftChoice)
    replies: TeacherReplies = field(default_factory=TeacherReplies)
    adapter: ExitAdapterSettings = field(default_factory=ExitAdapterSettings)
    eagle: EagleHeadSettings = field(default_factory=EagleHeadSettings)
    train: DraftTraining = field(default_factory=DraftTraining)
    # the draft -> <work_dir>/draft_train/<run_name>/; None: the draft's kind (exit_adapter | eagle_head:
    # where serve's models.draft=<kind> looks)
    run_name: Optional[str] = None
    registered_name: Optional[str] = None  # the MLflow model serve loads when that folder is absent; None: per kind

    def __post_init__(self) -> None:
        super().__post_init__()  # work_dir writable, device: checked before anything is trained
        for key in ("run_name", "registered_name"):
            value = getattr(self, key)
            if value is not None and (not value or "/" in value):
                raise ConfigError(key, value, "must be a non-empty name without '/'")

    @property
    def folder_name(self) -> str:
        return self.run_name or self.draft.kind

    @property
    def model_name(self) -> str:
        return self.registered_name or DRAFTS[self.draft.kind][0]


CLAIM = "Kangaroo / LayerSkip / EAGLE: drafts built on the target's own states draft cheaply with its own head"


@system_flow(
    "draft_train",
    DraftTrainConfig,
    order=25,
    summary_metric="val_agreement",
    quality="val_agreement_gain>=0",  # a draft no better than its untrained module never becomes @serving
    claim=CLAIM,
    measured="greedy agreement {val_agreement:.3f} (gain {val_agreement_gain:+.3f}) at c {draft_cost_c:.2f}",
)
def draft_train(cfg: DraftTrainConfig, tracker: Tracker) -> dict[str, float]:
    """Train the exit adapter or the EAGLE head on the target's states over its replies; register it in MLflow."""
    target = load_target(cfg.target_path)
    replies = teacher_sequences(target, cfg.replies, str(cfg.work_path("draft_train", "teacher_replies")))
    out_dir = str(cfg.work_path("draft_train", cfg.folder_name))
    sequences, starts = replies["sequences"], replies["starts"]
    if cfg.draft.kind == "eagle_head":
        trained = train_eagle(target, sequences, starts, cfg.eagle, cfg.train, cfg.seed, out_dir, tracker)
    else:
        trained = train_adapter(target, sequences, starts, cfg.adapter, cfg.train, cfg.seed, out_dir, tracker)
    return record_draft(tracker, trained, replies["source"], cfg.model_name, DRAFTS[cfg.draft.kind][1])
