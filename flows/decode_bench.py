"""`decode_bench`: AR, vanilla SD (each γ), PEARL, its two ablations and HF assisted generation,
side by side on the same prompts with the same total cores; tokens/s, speedups, α, MAT, forwards,
the Leviathan bound for the measured α and c, and SD/PEARL round models priced with the measured
per-forward costs (components/decoding/bench.py), with the α each target would need."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from components.checks import ConfigError, at_least
from flows.serve import ServeModelsConfig
from mlsys.flow import FlowConfig, system_flow
from mlsys.tracking import Tracker
from tasks.serve import benchmark_decoding, resolve_models


@dataclass
class DecodeBenchSettings:
    code_prompts: int = 3  # code-completion prompts (components/decoding/prompts.py)
    chat_prompts: int = 3  # chat prompts, through the chat template
    max_new_tokens: int = 48  # long enough for several speculative rounds per prompt
    pearl_gamma: Optional[int] = None  # None: round(c) measured before the run
    sd_gammas: list[int] = field(default_factory=lambda: [2, 4, 6])  # SD is reported at its best γ
    repeats: int = 2  # medians over repeats; methods rotate order each repeat
    hf_assisted: bool = True  # transformers generate(assistant_model=draft) (HF drafts only)

    def __post_init__(self) -> None:
        at_least("bench.code_prompts", self.code_prompts, 0)
        at_least("bench.chat_prompts", self.chat_prompts, 0)
        if self.code_prompts + self.chat_prompts < 1:
            raise ConfigError("bench.code_prompts", self.code_prompts, "with bench.chat_prompts: at least one prompt")
        at_least("bench.max_new_tokens", self.max_new_tokens, 1)
        at_least("bench.repeats", self.repeats, 1)
        if not self.sd_gammas or min(self.sd_gammas) < 1:
            raise ConfigError("bench.sd_gammas", self.sd_gammas, "must list draft lengths >= 1")
        if self.pearl_gamma is not None:
            at_least("bench.pearl_gamma", self.pearl_gamma, 1)


@dataclass
class DecodeBenchConfig(FlowConfig):
    models: ServeModelsConfig = field(default_factory=ServeModelsConfig)
    bench: DecodeBenchSettings = field(default_factory=DecodeBenchSettings)
    threads: Optional[int] = None  # total cores every method gets; None: torch's default

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.threads is not None:
            at_least("threads", self.threads, 1)


@system_flow(
    name="decode_bench",
    config=DecodeBenchConfig,
    order=31,
    summary_metric="pearl_speedup_vs_ar",
)
def decode_bench(cfg: DecodeBenchConfig, tracker: Tracker) -> dict[str, float]:
    """Decoding benchmark: AR vs SD vs PEARL (+ ablations, HF assisted) with equal cores."""
    import torch

    from components.decoding.bench import GOAL_VS_AR, GOAL_VS_SD, requirement_map, summarize

    models = resolve_models(cfg.models, str(cfg.work_path()), cfg.tracking.uri, cfg.torch_device())
    tracker.set_tags({"draft_source": models.draft_source, "draft_location": models.draft_location})
    threads = cfg.threads or torch.get_num_threads()
    result = benchmark_decoding(models, cfg.bench, threads)
    summary = summarize(result)
    if "draft_step_s" in result["costs"]:  # the alpha a draft of each cost would need (benchmark docs)
        alpha_map = requirement_map(result["costs"], GOAL_VS_AR, GOAL_VS_SD)
        tracker.log_dict(alpha_map, "alpha_map.json")
        summary.update({k: v for k, v in alpha_map.items() if k.startswith("least_alpha") and v is not None})
    for i, name in enumerate(result["methods"]):
        tracker.log_metrics({"tokens_per_s": result["methods"][name]["tokens_per_s"]}, step=i)
    tracker.log_dict(result, "decode_bench.json")
    return summary
