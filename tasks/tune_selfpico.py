"""Prefect tasks of the `tune_selfpico` flow: value targets by search with execution feedback, tuning."""

from __future__ import annotations

from prefect import get_run_logger, task

from components.compiler.tuning import TuneSettings
from components.sandbox import Sandbox, SandboxLimits
from components.selfpico.snippets import heldout_snippets, written_snippets
from components.selfpico.tuning import ValueData, ValueDataConfig, collect_value_data
from mlsys.tracking import Tracker
from tasks.tune_agent import folder_size_mb, tune_and_save


@task(name="selfpico-value-search")
def collect_value_chats(spec: ValueDataConfig, limits: SandboxLimits, tracker: Tracker) -> ValueData:
    """Search values for package function bodies and generated snippets in the sandbox (never a
    benchmark snippet); the chats to tune on."""
    evaluated = {s.code.strip() for s in heldout_snippets() + written_snippets()}
    data = collect_value_data(spec, Sandbox(limits), exclude=evaluated)
    if not data.chats:
        raise ValueError("tune_selfpico: the value search produced no chats (no snippet asked for a value)")
    get_run_logger().info(
        "%d snippets -> %d values -> %d chats in %.0f s",
        data.snippets,
        data.values,
        len(data.chats),
        data.search_seconds,
    )
    tracker.log_dict(data.examples, "search_examples.json")
    return data


@task(name="selfpico-tune")
def tune_value_model(
    data: ValueData,
    settings: TuneSettings,
    out_dir: str,
    modules: list[str],
    tracker: Tracker,
    threads: int | None = None,
    registered_name: str | None = None,
) -> dict[str, float]:
    """Fine-tune SmolLM2's top layers on the chats' replies (compile_calls' tuning loop); save only the
    tuned tensors to `out_dir` with tuning.json; register them; the run's metrics."""
    if threads:
        import torch  # noqa: PLC0415  (start-up cost: torch is loaded only when a run tunes)

        torch.set_num_threads(threads)
    provenance = {
        "modules": list(modules),
        "snippets": data.snippets,
        "values": data.values,
        "chats": len(data.chats),
        "feedback_chats": data.feedback_chats,
    }
    tuned = tune_and_save(data.chats, settings, out_dir, tracker, provenance, log_every=5)
    summary, folder = tuned["summary"], tuned["folder"]
    tracker.log_dict(summary, "tuning.json")
    if registered_name:
        version = tracker.log_model_dir(folder, "model", registered_name=registered_name)
        tracker.set_tags({"registered_model": f"{registered_name}/{version}"})
    losses = summary["report"]["losses"]
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "snippets": float(data.snippets),
        "values": float(data.values),
        "chats": float(len(data.chats)),
        "feedback_chats": float(data.feedback_chats),
        "search_minutes": data.search_seconds / 60,
        "tokens": float(summary["tokens"]),
        "steps": float(summary["report"]["steps"]),
        "first_reply_loss": losses[0] if losses else float("nan"),
        "final_reply_loss": sum(tail) / len(tail) if tail else float("nan"),
        "train_minutes": summary["report"]["seconds"] / 60,
        "saved_mb": folder_size_mb(folder),
    }
