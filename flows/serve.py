"""`serve`: an OpenAI-compatible endpoint decoding with PEARL parallel speculative decoding.

resolve models (target: SmolLM2-135M / quantized / folder; draft: trained GPT from the folder or
the MLflow registry, else a layer-skip draft) -> warm up (measure c = t_target/t_draft, γ = round(c))
-> serve /v1/models, /v1/completions, /v1/chat/completions on 127.0.0.1 until stopped.
`decoding=ar|sd|pearl|pearl_no_pre|pearl_no_post` picks the method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from components.checks import ConfigError, at_least
from components.decoding.config import DecodingConfig, ModelsConfig
from components.serving.app import RequestLimits
from components.serving.server import ConnectionLimits, stop_on_signals
from mlsys.flow import FlowConfig, system_flow
from mlsys.tracking import Tracker
from tasks.serve import resolve_models, serve_endpoint, warm_up


@dataclass
class ServeConfig(FlowConfig):
    models: ModelsConfig = field(default_factory=ModelsConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    host: str = "127.0.0.1"  # loopback by default: expose deliberately (host=0.0.0.0) behind an API key
    port: int = 8000  # 0: any free port
    api_key_env: Optional[str] = "SERVE_API_KEY"  # the key is read from this variable (never logged); unset: no key
    max_queue: int = 256  # requests admitted (decoding or waiting); more get 503 instead of crashing the server
    default_max_tokens: int = 256  # for chat requests that give no max_tokens
    duration_s: Optional[float] = None  # None: serve until stopped (deployment); a number: stop after it (tests, demo)
    smoke_test: bool = True  # one chat request through the openai client right after start
    smoke_prompt: str = "Write a Python function that reverses a string."
    smoke_max_tokens: int = 32
    load_test_requests: int = 0  # >0: that many concurrent loopback requests at start; p50/p99 to MLflow
    load_test_max_tokens: int = 8
    metrics_every_s: float = 60.0  # served counters to MLflow this often while serving
    requests: RequestLimits = field(default_factory=RequestLimits)  # body size and time, JSON depth, prompt length
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)  # open sockets, header time, drain

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise ConfigError("port", self.port, "must be 1-65535, or 0 for any free port")
        if not self.host:
            raise ConfigError("host", self.host, "must name an address to listen on (127.0.0.1: loopback)")
        at_least("max_queue", self.max_queue, 1)
        at_least("default_max_tokens", self.default_max_tokens, 1)
        if self.duration_s is not None:
            at_least("duration_s", self.duration_s, 0)
        at_least("smoke_max_tokens", self.smoke_max_tokens, 1)
        at_least("load_test_requests", self.load_test_requests, 0)
        at_least("load_test_max_tokens", self.load_test_max_tokens, 1)
        at_least("metrics_every_s", self.metrics_every_s, 0.1)
        if self.load_test_requests > self.max_queue:
            raise ConfigError(
                "load_test_requests",
                self.load_test_requests,
                f"more than max_queue={self.max_queue}: the load test would be refused with 503s",
            )
        super().__post_init__()


# The paper's claim this flow's summary metric measures (the suite's table, the run's summary).
CLAIM = "PEARL: more accepted draft tokens per target pass than SD"


@system_flow("serve", ServeConfig, order=30, summary_metric="served_mean_accepted_tokens", claim=CLAIM)
def serve(cfg: ServeConfig, tracker: Tracker) -> dict[str, float]:
    """OpenAI-compatible server decoding with PEARL (or AR / vanilla SD / the ablations)."""
    # SIGTERM/SIGINT from here on is a request to stop: serving drains and the run ends Completed
    # (and the process, with it the temporary Prefect server, exits normally).
    with stop_on_signals() as stop:
        return _serve(cfg, tracker, stop)


def _serve(cfg: ServeConfig, tracker: Tracker, stop) -> dict[str, float]:
    models = resolve_models(
        cfg.models, str(cfg.work_path()), cfg.tracking.uri, cfg.torch_device(), need_draft=cfg.decoding.method != "ar"
    )
    tracker.set_tags({"draft_source": models.draft_source, "draft_location": models.draft_location})
    ready = warm_up(models, cfg.decoding)
    tracker.log_metrics(ready["info"])
    try:
        served = serve_endpoint(models, ready["decoder"], cfg, tracker, stop)
    finally:
        ready["decoder"].close()
    return {**served, "gamma": ready["info"]["gamma"]}
