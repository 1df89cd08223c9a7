"""Prefect task of the `tune_selfpico` flow: value targets by search with execution feedback (the tuning
itself is `tasks.llm.tune_on_chats`, shared with tune_agent)."""

from __future__ import annotations

from prefect import get_run_logger, task

from components.sandbox import Sandbox, SandboxLimits
from components.selfpico.snippets import heldout_snippets, written_snippets
from components.selfpico.tuning import ValueData, ValueDataConfig, collect_value_data
from mlsys.tracking import Tracker


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
