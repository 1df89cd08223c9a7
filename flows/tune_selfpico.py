"""`tune_selfpico`: SmolLM2-135M tuned for SelfPiCo's value prediction (as the paper tunes Code Llama).

Package function bodies (modules the benchmark never samples) run in the sandbox; for every value
a run asks for, candidate values are executed and the one executing the most lines is the target;
the LLM-guided predictor's zero-shot prompt (and its feedback turn, where a candidate failed) ->
the target are the chats; the top layers are tuned on the replies -> <work_dir>/<run_name>,
registered in MLflow. Then `mlsys run selfpico sp_predictor=llm llm.model_path=data/selfpico_model`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from components.checks import at_least
from components.compiler.tuning import TuneSettings, tuning_metrics
from components.sandbox import SandboxLimits
from components.selfpico.tuning import ValueDataConfig
from mlsys.flow import FlowConfig, system_flow
from mlsys.tracking import Tracker
from tasks.llm import register_tuned, tune_on_chats
from tasks.tune_selfpico import collect_value_chats


def _value_tune_settings() -> TuneSettings:
    return TuneSettings(train_layers=8, lr=2e-4, warmup_steps=5, epochs=2.0, batch_tokens=2048, minutes=30)


@dataclass
class TuneSelfPicoConfig(FlowConfig):
    data: ValueDataConfig = field(default_factory=ValueDataConfig)
    train: TuneSettings = field(default_factory=_value_tune_settings)  # top 8 of 30 layers, <= 30 min
    threads: Optional[int] = None  # torch CPU threads; None: torch's default (all cores)
    run_name: str = "selfpico_model"  # -> <work_dir>/selfpico_model, loaded by llm.model_path=data/selfpico_model
    registered_name: Optional[str] = "lm-selfpico"  # MLflow registry name; None: not registered
    wall_seconds: float = 10.0  # sandbox limits per candidate execution
    cpu_seconds: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("wall_seconds", self.wall_seconds, 0.5)
        at_least("cpu_seconds", self.cpu_seconds, 1)


# The paper's claim this flow's summary metric measures (the suite's table, the run's summary).
CLAIM = "SelfPiCo tunes its value predictor on execution-guided values: lower reply loss after tuning"


@system_flow("tune_selfpico", TuneSelfPicoConfig, order=91, summary_metric="final_reply_loss", claim=CLAIM)
def tune_selfpico(cfg: TuneSelfPicoConfig, tracker: Tracker) -> dict[str, float]:
    """Tune SmolLM2 on values found by search with execution feedback; register the tuned layers."""
    limits = SandboxLimits(wall_seconds=cfg.wall_seconds, cpu_seconds=cfg.cpu_seconds)
    data = collect_value_chats(cfg.data, limits, tracker)
    provenance = data.provenance(cfg.data)
    tuned = tune_on_chats(
        data.chats, cfg.train, str(cfg.work_path(cfg.run_name)), tracker, provenance, threads=cfg.threads
    )
    register_tuned(tuned["folder"], cfg.registered_name, tracker)
    minutes = tuned["summary"]["report"]["seconds"] / 60
    return data.metrics() | tuning_metrics(tuned["summary"], tuned["folder"]) | {"train_minutes": minutes}
