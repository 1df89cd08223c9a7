"""The settings the decoding engine, its model sources and its benchmark take: every default once, here.

`serve` and `decode_bench` (flows/) compose these as their `models`, `decoding` and `bench`
sections; conf/decoding/*.yaml state only the method each option picks; benchmarks/decoding.py
builds the same dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from components.checks import ConfigError, at_least, in_range, one_of
from components.decoding.timing import COST_ROUNDS

EXIT_ADAPTER_NAME = "exit-adapter"  # the MLflow model the draft_train flow registers and `serve` loads
EAGLE_HEAD_NAME = "eagle-head"  # the same for its EAGLE head (draft_train draft=eagle_head)
METHODS = ("ar", "sd", "pearl", "pearl_no_pre", "pearl_no_post")
TARGET_SOURCES = ("smollm2_q4_native", "smollm2", "quantized", "hf_folder", "tiny_random")
DRAFT_SOURCES = (
    "auto",
    "prompt_lookup",
    "layerskip",
    "requantized",
    "exit_adapter",
    "eagle_head",
    "gpt_folder",
    "mlflow",
    "tiny_random",
    "none",
)


@dataclass
class ModelsConfig:
    """Where the target (the model served) and the draft (the model that proposes) come from."""

    # smollm2_q4_native: the packaged GGUF's own Q4_1 blocks through the integer kernel (4.5 bits/weight);
    # smollm2: its dequantized fp32 copy (7x the bytes); quantized | hf_folder: a folder; tiny_random: tests
    target: str = "smollm2_q4_native"
    target_path: Optional[str] = None  # folder for quantized / hf_folder (smollm2_q4_native: another GGUF)
    target_registered_name: Optional[str] = None  # quantized / hf_folder without a path: this MLflow model
    dtype: str = "float32"  # smollm2 / hf_folder: the GGUF's weights are dequantized 4-bit; fp32 keeps greedy exact
    # auto: the trained draft folder, else MLflow `lm-draft@serving`, else prompt_lookup (native target) or
    # layerskip; prompt_lookup: n-gram copy from the context (no model); layerskip: the target's first
    # draft_layers layers + its head; requantized: the native target at draft_bits; exit_adapter: the native
    # target's first layers + a trained adapter (the draft_train flow's); eagle_head: one trained layer over the
    # native target's last hidden state (draft_train draft=eagle_head); gpt_folder | mlflow | tiny_random | none
    draft: str = "auto"
    # gpt_folder: a folder written by GPT.save; exit_adapter / eagle_head: the draft_train flow's folder (None:
    # its output under work_dir, else the MLflow model `draft_adapter_registered_name` / `draft_eagle_registered_name`)
    draft_path: Optional[str] = None
    draft_registered_name: str = "lm-draft"  # the lm_train flow registers the draft under this name
    draft_adapter_registered_name: str = EXIT_ADAPTER_NAME  # the draft_train flow registers the adapter under it
    draft_eagle_registered_name: str = EAGLE_HEAD_NAME  # ... and the EAGLE head under this one
    draft_layers: int = 8  # layerskip: first 8 of SmolLM2's 30 layers (+ the shared head)
    draft_ngram: int = 3  # prompt_lookup: longest n-gram matched (then shorter ones), as HF's max_matching_ngram_size
    draft_bits: int = 2  # requantized: bits per weight of every projection and the head (2: ~3 bits with metadata)
    served_name: str = "SmolLM2-135M-Instruct"  # the `model` clients ask for (conf/llm/openai.yaml uses it)

    def __post_init__(self) -> None:
        one_of("models.target", self.target, TARGET_SOURCES)
        one_of("models.draft", self.draft, DRAFT_SOURCES)
        at_least("models.draft_layers", self.draft_layers, 1)
        at_least("models.draft_ngram", self.draft_ngram, 1)
        one_of("models.draft_bits", self.draft_bits, (2, 4))
        if self.draft in ("exit_adapter", "eagle_head") and self.target != "smollm2_q4_native":
            raise ConfigError("models.draft", self.draft, "runs on the native target (models.target=smollm2_q4_native)")
        if not self.draft_adapter_registered_name:
            raise ConfigError("models.draft_adapter_registered_name", "", "the adapter's registered name is needed")
        if not self.draft_eagle_registered_name:
            raise ConfigError("models.draft_eagle_registered_name", "", "the EAGLE head's registered name is needed")
        if not self.served_name:
            raise ConfigError("models.served_name", self.served_name, "clients need a model name to ask for")


@dataclass
class DecodingConfig:
    """conf/decoding/*.yaml: which decoding method, and how it splits the cores."""

    method: str = "pearl"  # ar | sd | pearl | pearl_no_pre | pearl_no_post
    gamma: Optional[int] = None  # draft tokens per round; None: round(c) measured at warm-up (PEARL's rule)
    max_gamma: int = 8  # cap on the measured γ: a long draft wastes work on every rejection
    parallel: bool = True  # draft and target on two workers at once (PEARL); False: same outputs, one thread
    threads: Optional[int] = None  # total torch threads; None: torch's default (the machine's cores)
    draft_share: float = 0.5  # the draft worker's share of the threads in parallel rounds (prompt lookup: none)

    def __post_init__(self) -> None:
        one_of("decoding.method", self.method, METHODS)
        if self.gamma is not None:
            at_least("decoding.gamma", self.gamma, 1)
        at_least("decoding.max_gamma", self.max_gamma, 1)
        if self.threads is not None:
            at_least("decoding.threads", self.threads, 1)
        in_range("decoding.draft_share", self.draft_share, 0.0, 1.0)


@dataclass
class BenchConfig:
    """The side-by-side decoding benchmark: prompts, lengths, γs and repeats."""

    code_prompts: int = 3  # code-completion prompts (components/decoding/prompts.py)
    chat_prompts: int = 3  # chat prompts, through the chat template
    edit_prompts: int = 0  # code-edit chat prompts (the reply copies the quoted code: prompt lookup's case)
    max_new_tokens: int = 48  # long enough for several speculative rounds per prompt
    pearl_gamma: Optional[int] = None  # None: round(c) measured before the run, capped at max_gamma
    max_gamma: int = 8  # cap on the measured γ
    sd_gammas: list[int] = field(default_factory=lambda: [2, 4, 6])  # SD is reported at its best γ
    repeats: int = 2  # medians over repeats; methods rotate order each repeat
    cost_rounds: int = COST_ROUNDS  # 9 interleaved samples of every per-forward cost (the round models' inputs)
    hf_assisted: bool = True  # transformers generate(assistant_model=draft) (transformers targets and drafts only)

    def __post_init__(self) -> None:
        at_least("bench.code_prompts", self.code_prompts, 0)
        at_least("bench.chat_prompts", self.chat_prompts, 0)
        at_least("bench.edit_prompts", self.edit_prompts, 0)
        if self.code_prompts + self.chat_prompts + self.edit_prompts < 1:
            raise ConfigError("bench.code_prompts", self.code_prompts, "with chat/edit_prompts: at least one prompt")
        at_least("bench.max_new_tokens", self.max_new_tokens, 1)
        at_least("bench.repeats", self.repeats, 1)
        at_least("bench.max_gamma", self.max_gamma, 1)
        at_least("bench.cost_rounds", self.cost_rounds, 1)
        if not self.sd_gammas or min(self.sd_gammas) < 1:
            raise ConfigError("bench.sd_gammas", self.sd_gammas, "must list draft lengths >= 1")
        if self.pearl_gamma is not None:
            at_least("bench.pearl_gamma", self.pearl_gamma, 1)
