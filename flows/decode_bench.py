"""`decode_bench`: AR, vanilla SD (each γ), PEARL, its two ablations and HF assisted generation,
side by side on the same prompts with the same total cores; tokens/s, speedups, α, MAT, forwards,
the Leviathan bound for the measured α and c, and SD/PEARL round models priced with the measured
per-forward costs (components/decoding/bench.py), with the α each target would need."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from components.checks import at_least
from components.decoding.config import BenchConfig, ModelsConfig
from mlsys.flow import FlowConfig, system_flow
from mlsys.tracking import Tracker
from tasks.serve import benchmark_decoding, resolve_models, summarize_decoding


@dataclass
class DecodeBenchConfig(FlowConfig):
    models: ModelsConfig = field(default_factory=ModelsConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    threads: Optional[int] = None  # total cores every method gets; None: torch's default

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.threads is not None:
            at_least("threads", self.threads, 1)


# The paper's claim this flow's summary metric measures (the suite's table, the run's summary).
CLAIM = "PEARL: up to ~4x faster than autoregressive decoding"


@system_flow("decode_bench", DecodeBenchConfig, order=31, summary_metric="pearl_speedup_vs_ar", claim=CLAIM)
def decode_bench(cfg: DecodeBenchConfig, tracker: Tracker) -> dict[str, float]:
    """Decoding benchmark: AR vs SD vs PEARL (+ ablations, HF assisted) with equal cores."""
    models = resolve_models(cfg.models, str(cfg.work_path()), cfg.tracking.uri, cfg.torch_device())
    tracker.set_tags({"draft_source": models.draft_source, "draft_location": models.draft_location})
    result = benchmark_decoding(models, cfg.bench, cfg.threads or torch.get_num_threads())
    return summarize_decoding(result, tracker)
