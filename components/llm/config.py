"""The `llm` config group's type: one dataclass for every backend (conf/llm/{embedded,openai,scripted}.yaml).

A flow declares `llm: LLMConfig = field(default_factory=LLMConfig)` and `- llm: embedded` in its
defaults list, then builds the backend with `components.llm.factory.build_llm(cfg.llm, base_dir=...)`.
`llm=openai llm.base_url=...` or `llm=scripted llm.responses=[...]` swap the backend with no code
change; one type for all three options makes a misspelt key fail at composition with its name.
Build the LLM where it is used: on a Dask worker, inside the task, from this (picklable) config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional


@dataclass
class LLMConfig:
    """Every backend's settings; conf/llm/{embedded,openai,scripted}.yaml pick the backend by `_target_`."""

    _target_: str = "components.llm.factory.embedded"  # which backend: .embedded | .openai_compatible | .scripted
    model: str = "SmolLM2-135M-Instruct"  # embedded: the only model shipped offline; openai: the served model's name
    # --- embedded (transformers, in-process) ---
    dtype: str = "float32"  # the weights are dequantized 4-bit ones; bf16 is ~1.4x faster on CPU but less exact
    device: str = "cpu"  # cpu | cuda | auto
    threads: Optional[int] = None  # torch CPU threads (process-wide); None: torch's default (all cores)
    prefix_cache_entries: int = 4  # KV caches of recent prompts kept: few-shot prefixes prefill once
    model_path: Optional[str] = None  # a fine-tuned SmolLM2 folder (the tune_agent flow's); None: packaged
    # --- openai-compatible endpoint ---
    base_url: Optional[str] = None  # e.g. http://127.0.0.1:8000/v1 (the `serve` flow); None: $base_url_env
    api_key: Optional[str] = None  # prefer the environment: keys do not belong in logged params
    base_url_env: str = "OPENAI_BASE_URL"  # where the endpoint is read from when base_url is None
    api_key_env: str = "OPENAI_API_KEY"  # where the key is read from when api_key is None (local servers need none)
    retries: int = 3  # transient failures (refused, timeout, 429, 5xx) retried with exponential backoff
    backoff_s: float = 0.5  # first retry waits ~0.5 s, then 1 s, 2 s (jittered)
    # --- every backend ---
    timeout_s: Optional[float] = 120.0  # one request's wall-clock budget; a 2-core CPU makes ~14 tok/s
    max_concurrency: Optional[int] = 1  # requests inside the backend at once; None: unlimited
    cache_dir: Optional[str] = None  # on-disk response cache for reproducible reruns; relative: under work_dir
    seed: int = 0  # sampling seed (temperature > 0); part of the cache key
    # --- scripted (tests and plumbing demos only; never presented as model output) ---
    responses: list[str] = field(default_factory=list)  # replayed in order
    script: Optional[str] = None  # or module.function(messages) -> str
    delay_s: float = 0.0  # simulated seconds per scripted response (time to first token)
    token_delay_s: float = 0.0  # plus simulated seconds per word of it (decoding speed)


def redacted(llm_cfg: Any) -> dict:
    """The config as a dict with the API key masked, for logging."""
    values = asdict(llm_cfg)
    if values.get("api_key"):
        values["api_key"] = "***"
    return values
