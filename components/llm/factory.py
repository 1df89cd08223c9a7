"""Factories named by `_target_` in conf/llm/*.yaml; each takes every field of `tasks.llm.LLMConfig`.

All three options share one config type (so `llm=embedded|openai|scripted` swaps cleanly and a wrong
key fails at composition); each factory reads the fields that concern its backend and ignores the
rest. No Hydra here: `tasks.llm.build_llm` instantiates these.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from components.llm.base import LLM, ScriptedLLM
from components.llm.cache import ResponseCache


def _cache(cache_dir: str | None) -> ResponseCache | None:
    return ResponseCache(Path(cache_dir)) if cache_dir else None


def embedded(
    *,
    model: str = "SmolLM2-135M-Instruct",
    dtype: str = "float32",
    device: str = "cpu",
    timeout_s: float | None = None,
    seed: int = 0,
    max_concurrency: int | None = 1,
    cache_dir: str | None = None,
    threads: int | None = None,
    prefix_cache_entries: int = 4,
    model_path: str | None = None,
    **_other_backends: Any,
) -> LLM:
    from components.llm.embedded import EmbeddedLLM

    return EmbeddedLLM(
        model=model,
        dtype=dtype,
        device=device,
        timeout_s=timeout_s,
        seed=seed,
        cache=_cache(cache_dir),
        max_concurrency=max_concurrency,
        threads=threads,
        prefix_cache_entries=prefix_cache_entries,
        model_path=model_path,
    )


def openai_compatible(
    *,
    model: str,
    base_url: str | None = None,
    api_key: str | None = None,
    base_url_env: str = "OPENAI_BASE_URL",
    api_key_env: str = "OPENAI_API_KEY",
    timeout_s: float | None = 60.0,
    retries: int = 3,
    backoff_s: float = 0.5,
    seed: int | None = None,
    max_concurrency: int | None = 4,
    cache_dir: str | None = None,
    **_other_backends: Any,
) -> LLM:
    from components.llm.openai_compat import OpenAICompatibleLLM

    return OpenAICompatibleLLM(
        model=model,
        base_url=base_url,
        api_key=api_key,
        base_url_env=base_url_env,
        api_key_env=api_key_env,
        timeout_s=timeout_s or 60.0,
        retries=retries,
        backoff_s=backoff_s,
        seed=seed,
        cache=_cache(cache_dir),
        max_concurrency=max_concurrency,
    )


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
