"""Prefect tasks of the `tune_selfpico` flow: value targets by search with execution feedback, tuning."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from prefect import get_run_logger, task

from components.checks import ConfigError, at_least
from components.selfpico.tuning import BENCHMARK_MODULES
from mlsys.tracking import Tracker
from tasks.tune_agent import tune_and_save


@dataclass
class ValueDataConfig:
    """Which package function bodies the value search runs on."""

    modules: list[str] = field(
        default_factory=lambda: [
            "email.utils",
            "urllib.parse",
            "configparser",
            "csv",
            "string",
            "pprint",
            "ipaddress",
            "gettext",
            "mimetypes",
            "http.cookies",
            "argparse",
            "tokenize",
            "optparse",
        ]
    )
    count: int = 48  # function bodies sampled (seeded) from those modules' source
    max_lines: int = 20  # longer bodies make long prompts for a 135M model
    per_key: int = 6  # candidate values executed per requested value
    seed: int = 0

    def __post_init__(self) -> None:
        overlap = sorted(set(self.modules) & set(BENCHMARK_MODULES))
        if overlap:
            raise ConfigError(
                "data.modules",
                self.modules,
                f"{overlap} are sampled by the benchmark's development set: never tune on them",
            )
        if not self.modules:
            raise ConfigError("data.modules", self.modules, "empty: nothing to tune on")
        at_least("data.count", self.count, 1)
        at_least("data.per_key", self.per_key, 1)


@task(name="selfpico-value-search")
def collect_value_chats(spec: ValueDataConfig, limits: dict) -> dict[str, Any]:
    """Search values for package function bodies in the sandbox; the chats to tune on."""
    from components.sandbox import Sandbox, SandboxLimits
    from components.selfpico.snippets import heldout_snippets, package_function_snippets, written_snippets
    from components.selfpico.tuning import search_values, value_chats

    evaluated = {s.code.strip() for s in heldout_snippets() + written_snippets()}
    snippets = [
        s
        for s in package_function_snippets(spec.modules, spec.count, seed=spec.seed, max_lines=spec.max_lines)
        if s.code.strip() not in evaluated
    ]
    sandbox = Sandbox(SandboxLimits(**limits))
    found = []
    start = time.perf_counter()
    for snippet in snippets:
        found += search_values(snippet, sandbox, per_key=spec.per_key)
    chats = value_chats(found)
    get_run_logger().info(
        "%d snippets -> %d values -> %d chats in %.0f s",
        len(snippets),
        len(found),
        len(chats),
        time.perf_counter() - start,
    )
    return {
        "chats": chats,
        "snippets": len(snippets),
        "values": len(found),
        "feedback_chats": sum(len(c) > 4 for c in chats),
        "search_seconds": time.perf_counter() - start,
        "examples": [{"key": f.key, "target": f.target, "lines": f.lines, "failures": f.failures} for f in found[:40]],
    }


@task(name="selfpico-tune")
def tune_value_model(
    chats: list, settings: Any, out_dir: str, tracker: Tracker, provenance: dict, log_every: int = 5
) -> dict:
    """Fine-tune SmolLM2's top layers on the chats' replies (compile_calls' tuning loop); save only the
    tuned tensors to `out_dir` with tuning.json."""
    return tune_and_save(chats, settings, out_dir, tracker, provenance, log_every)
