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
from components.compiler.tuning import TuneSettings
from mlsys.flow import FlowConfig, system_flow
from mlsys.tracking import Tracker
from tasks.tune_agent import folder_size_mb
from tasks.tune_selfpico import ValueDataConfig, collect_value_chats, tune_value_model


def _value_tune_settings() -> TuneSettings:
    return TuneSettings(train_layers=8, lr=2e-4, warmup_steps=5, epochs=2.0, batch_tokens=2048)


@dataclass
class TuneSelfPicoConfig(FlowConfig):
    data: ValueDataConfig = field(default_factory=ValueDataConfig)
    train: TuneSettings = field(default_factory=_value_tune_settings)
    threads: Optional[int] = None  # torch CPU threads; None: torch's default (all cores)
    run_name: str = "selfpico_model"  # -> <work_dir>/selfpico_model, loaded by llm.model_path=data/selfpico_model
    registered_name: Optional[str] = "lm-selfpico"  # MLflow registry name; None: not registered
    wall_seconds: float = 10.0  # sandbox limits per candidate execution
    cpu_seconds: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("wall_seconds", self.wall_seconds, 0.5)
        at_least("cpu_seconds", self.cpu_seconds, 1)


@system_flow(
    name="tune_selfpico",
    config=TuneSelfPicoConfig,
    order=91,
    summary_metric="final_reply_loss",
)
def tune_selfpico(cfg: TuneSelfPicoConfig, tracker: Tracker) -> dict[str, float]:
    """Tune SmolLM2 on values found by search with execution feedback; register the tuned layers."""
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = collect_value_chats(cfg.data, {"wall_seconds": cfg.wall_seconds, "cpu_seconds": cfg.cpu_seconds})
    if not data["chats"]:
        raise ValueError("tune_selfpico: the value search produced no chats (no snippet asked for a value)")
    tracker.log_dict(data["examples"], "search_examples.json")
    provenance = {
        "modules": list(cfg.data.modules),
        "snippets": data["snippets"],
        "values": data["values"],
        "chats": len(data["chats"]),
        "feedback_chats": data["feedback_chats"],
    }
    tuned = tune_value_model(data["chats"], cfg.train, str(cfg.work_path(cfg.run_name)), tracker, provenance)
    summary, folder = tuned["summary"], tuned["folder"]
    tracker.log_dict(summary, "tuning.json")
    if cfg.registered_name:
        version = tracker.log_model_dir(folder, "model", registered_name=cfg.registered_name)
        tracker.set_tags({"registered_model": f"{cfg.registered_name}/{version}"})
    losses = summary["report"]["losses"]
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "snippets": float(data["snippets"]),
        "values": float(data["values"]),
        "chats": float(len(data["chats"])),
        "feedback_chats": float(data["feedback_chats"]),
        "search_minutes": data["search_seconds"] / 60,
        "tokens": float(summary["tokens"]),
        "steps": float(summary["report"]["steps"]),
        "first_reply_loss": losses[0] if losses else float("nan"),
        "final_reply_loss": sum(tail) / len(tail) if tail else float("nan"),
        "train_minutes": summary["report"]["seconds"] / 60,
        "saved_mb": folder_size_mb(folder),
    }
