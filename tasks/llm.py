"""The `llm` config group shared by every agent flow, and the helpers that build and account an LLM.

A flow declares

    llm: LLMConfig = field(default_factory=LLMConfig)      # in its config dataclass
    - llm: embedded                                         # in conf/<flow>.yaml defaults

and then `llm = build_llm(cfg.llm, base_dir=cfg.work_path())`; at the end
`log_llm_usage(tracker, llm)` puts calls/tokens in MLflow. `llm=openai llm.base_url=...` or
`llm=scripted llm.responses=[...]` swap the backend with no code change. One dataclass types all
three options, so a misspelt key fails at composition with its name.

Build the LLM where it is used: on a Dask worker, build it inside the task from the (picklable)
config; the embedded weights load once per process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from mlsys.environment import PROJECT_ROOT


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
    base_url_env: str = "OPENAI_BASE_URL"
    api_key_env: str = "OPENAI_API_KEY"
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


def build_llm(llm_cfg: Any, base_dir: str | Path | None = None):
    """Instantiate the backend `llm_cfg._target_` names; a relative cache_dir lands under `base_dir`."""
    from dataclasses import asdict, is_dataclass

    from hydra.utils import get_method

    values = asdict(llm_cfg) if is_dataclass(llm_cfg) else dict(llm_cfg)
    target = values.pop("_target_")
    if values.get("cache_dir"):
        cache = Path(values["cache_dir"])
        values["cache_dir"] = str(cache if cache.is_absolute() else Path(base_dir or PROJECT_ROOT) / cache)
    if values.get("model_path") and not Path(values["model_path"]).is_absolute():
        values["model_path"] = str(PROJECT_ROOT / values["model_path"])  # data/agent_model from anywhere
    try:
        factory = get_method(target)
    except Exception as err:
        raise ValueError(f"llm._target_={target!r} is not an importable factory: {err}") from err
    return factory(**values)


def llm_usage_metrics(llm, prefix: str = "llm") -> dict[str, float]:
    return {f"{prefix}.{key}": value for key, value in llm.usage.as_dict().items()}


def log_llm_usage(tracker, llm, prefix: str = "llm", step: int | None = None) -> dict[str, float]:
    """Log the LLM's calls and token counts to the run (metrics `<prefix>.calls`, ...)."""
    metrics = llm_usage_metrics(llm, prefix)
    tracker.log_metrics(metrics, step=step)
    return metrics


def redacted(llm_cfg: Any) -> dict:
    """The config as a dict with the API key masked, for logging."""
    from dataclasses import asdict

    values = asdict(llm_cfg)
    if values.get("api_key"):
        values["api_key"] = "***"
    return values
