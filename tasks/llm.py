"""Prefect tasks every LLM flow shares: tuning SmolLM2 on chats, registering the tuned layers.

The `llm` config group's type and its builder live in components.llm (`LLMConfig` in
components/llm/config.py, `build_llm` in components/llm/factory.py).
"""

from __future__ import annotations

import torch
from prefect import get_run_logger, task

from components.compiler.tuning import TuneSettings, tune_and_save
from mlsys.tracking import Tracker


@task(name="llm-tune")
def tune_on_chats(
    chats: list,
    settings: TuneSettings,
    out_dir: str,
    tracker: Tracker,
    provenance: dict,
    log_every: int = 5,
    threads: int | None = None,
) -> dict:
    """Fine-tune SmolLM2's top layers on the chats' replies; save the tuned layers and tuning.json to
    `out_dir`; metrics to MLflow every `log_every` steps. `threads`: torch CPU threads (None: all cores)."""
    if threads:
        torch.set_num_threads(threads)

    def on_step(step: int, metrics: dict) -> None:
        if step % log_every == 0:
            tracker.log_metrics(metrics, step=step)

    tuned = tune_and_save(chats, settings, out_dir, provenance, log=get_run_logger().info, on_step=on_step)
    tracker.log_dict(tuned["summary"], "tuning.json")
    return tuned


@task(name="llm-register")
def register_tuned(folder: str, registered_name: str | None, tracker: Tracker) -> str | None:
    """Log the tuned layers as the run's model and register them as `registered_name` (None: neither)."""
    if not registered_name:
        return None
    version = tracker.log_model_dir(folder, "model", registered_name=registered_name)
    tracker.set_tags({"registered_model": f"{registered_name}/{version}"})
    return version
