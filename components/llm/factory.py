"""Build an LLM from the `llm` config group: `build_llm` calls the factory `_target_` names.

The factories (the `_target_`s of conf/llm/*.yaml) each take every field of `LLMConfig` and pass on
the ones their backend's constructor accepts, so `llm=embedded|openai|scripted` swaps cleanly and a
wrong key fails at composition. Called directly, each falls back to its backend's own defaults.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from components.llm.base import LLM, ScriptedLLM
from components.llm.cache import ResponseCache
from components.llm.config import LLMConfig

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # a relative model_path (data/agent_model) is under it


def build_llm(llm_cfg: LLMConfig | dict, base_dir: str | Path | None = None) -> LLM:
    """Instantiate the backend `llm_cfg._target_` names; a relative cache_dir lands under `base_dir`."""
    values = asdict(llm_cfg) if is_dataclass(llm_cfg) else dict(llm_cfg)
    target = values.pop("_target_")
    if values.get("cache_dir"):
        cache = Path(values["cache_dir"])
        values["cache_dir"] = str(cache if cache.is_absolute() else Path(base_dir or PROJECT_ROOT) / cache)
    if values.get("model_path") and not Path(values["model_path"]).is_absolute():
        values["model_path"] = str(PROJECT_ROOT / values["model_path"])  # data/agent_model from anywhere
    try:
        factory = resolve_callable(target)
    except ValueError as err:
        raise ValueError(f"llm._target_={target!r} is not an importable factory: {err}") from err
    return factory(**values)


def _cache(cache_dir: str | None) -> ResponseCache | None:
    return ResponseCache(Path(cache_dir)) if cache_dir else None


def _construct(backend: type, settings: dict[str, Any]) -> LLM:
    """`backend(...)` with the settings its constructor takes (the other backends' are ignored)."""
    accepted = inspect.signature(backend).parameters
    kwargs = {key: value for key, value in settings.items() if key in accepted}
    return backend(**kwargs, cache=_cache(settings.get("cache_dir")))


def embedded(**settings: Any) -> LLM:
    """SmolLM2-135M-Instruct in this process (`EmbeddedLLM`)."""
    from components.llm.embedded import EmbeddedLLM  # noqa: PLC0415  (start-up cost: torch and transformers)

    return _construct(EmbeddedLLM, settings)


def openai_compatible(**settings: Any) -> LLM:
    """Any OpenAI-compatible endpoint (`OpenAICompatibleLLM`); `model` is required."""
    from components.llm.openai_compat import OpenAICompatibleLLM  # noqa: PLC0415  (start-up cost: the openai client)

    if settings.get("timeout_s", 60.0) is None:
        settings["timeout_s"] = 60.0  # an endpoint that never answers must not hang the run
    return _construct(OpenAICompatibleLLM, settings)


def scripted(
    *,
    responses: Sequence[str] = (),
    script: str | None = None,
    delay_s: float = 0.0,
    token_delay_s: float = 0.0,
    max_concurrency: int | None = None,
    cache_dir: str | None = None,
    **_other_backends: Any,
) -> LLM:
    """Replays `responses` in order, or calls the function at dotted path `script` (messages -> str).
    For tests and plumbing demos only: never presented as model output."""
    if script and responses:
        raise ValueError("llm=scripted takes either llm.responses or llm.script, not both")
    if not script and not responses:
        raise ValueError("llm=scripted needs llm.responses=[...] or llm.script=module.function")
    source: Sequence[str] | Callable = resolve_callable(script) if script else list(responses)
    return ScriptedLLM(
        source, cache=_cache(cache_dir), max_concurrency=max_concurrency, delay_s=delay_s, token_delay_s=token_delay_s
    )


def resolve_callable(dotted: str) -> Callable:
    module_name, _, attr = dotted.rpartition(".")
    if not module_name:
        raise ValueError(f"expected module.function, got {dotted!r}")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {dotted!r}: {err}") from err
    if not callable(fn):
        raise ValueError(f"{dotted!r} is not callable")
    return fn
