"""`lm_train`: train a causal LM on on-machine text with DataStates lazy async checkpointing.

prepare corpus -> train (lazy async checkpoint every k steps; `resume=latest` continues bit-for-bit;
in this process or on several under torchrun, DDP or FSDP2, each rank writing its own shard)
-> evaluate validation loss / perplexity and a text sample -> log everything and register the model
in MLflow (the `serve` and `quantize` flows load it by name).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from components.checkpoint import CheckpointSettings
from components.checks import ConfigError, at_least
from components.lm.corpus import CorpusSpec
from components.lm.launch import LaunchSettings
from components.lm.model import GPTConfig
from components.lm.trainer import TrainJob, is_gpt
from components.lm.training import TrainSettings
from mlsys.flow import FlowConfig, system_flow
from mlsys.tracking import Tracker
from tasks.lm_train import evaluate_model, prepare_corpus, record_run, train_model


@dataclass
class LMTrainConfig(FlowConfig):
    model: GPTConfig = field(default_factory=GPTConfig)  # conf/model/*.yaml: the draft GPT or SmolLM2 fine-tuning
    corpus: CorpusSpec = field(default_factory=CorpusSpec)
    train: TrainSettings = field(default_factory=TrainSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    launcher: LaunchSettings = field(default_factory=LaunchSettings)  # conf/launcher/*.yaml: local | torchrun
    # model -> <work_dir>/lm_train/<run_name>/, checkpoints -> <work_dir>/lm_train/checkpoints/<run_name>/;
    # None: "draft" for gpt (where the serve flow's PEARL draft is looked for), "smollm2_ft" for smollm2
    run_name: Optional[str] = None
    resume: Optional[str] = None  # 'latest' (newest committed checkpoint of run_name) or a checkpoint folder
    registered_name: Optional[str] = None  # MLflow registry name; None: lm-draft (gpt) / lm-smollm2-ft (smollm2)
    log_every: int = 10  # training metrics to MLflow every this many steps
    sample_prompt: str = "def fibonacci(n):"  # greedy sample logged as text after training
    sample_tokens: int = 48  # length of that sample

    def __post_init__(self) -> None:
        super().__post_init__()  # work_dir writable, device: checked before anything is trained or moved
        at_least("log_every", self.log_every, 1)
        at_least("sample_tokens", self.sample_tokens, 0)
        if self.resume not in (None, "latest") and not Path(self.resume).is_dir():
            raise ConfigError("resume", self.resume, "must be 'latest' or an existing checkpoint folder")

    def run_label(self) -> str:
        return self.run_name or ("draft" if is_gpt(self.model) else "smollm2_ft")

    def model_name(self) -> str:
        return self.registered_name or ("lm-draft" if is_gpt(self.model) else "lm-smollm2-ft")

    def train_job(self, corpus_folder: str) -> TrainJob:
        """The run's training job: the model files under <work_dir>/lm_train/<run>, its checkpoints apart."""
        checkpoints = self.checkpoint.dir or str(self.work_path("lm_train", "checkpoints", self.run_label()))
        return TrainJob(
            model=self.model,
            train=self.train,
            checkpoint=self.checkpoint,
            corpus_folder=corpus_folder,
            run_dir=str(self.work_path("lm_train", self.run_label())),
            checkpoint_dir=checkpoints,
            resume=self.resume,
            seed=self.seed,
            device=self.device,
        )


@system_flow(
    name="lm_train",
    config=LMTrainConfig,
    order=10,
    summary_metric="val_perplexity",
    quality="val_perplexity<=500",  # a draft this good may become lm-draft@serving
    claim="the PEARL draft, trained with DataStates lazy async checkpoints (their 4-34x: benchmarks/)",
    measured="val perplexity {initial_val_perplexity:.0f} -> {val_perplexity:.0f}",
)
def lm_train(cfg: LMTrainConfig, tracker: Tracker) -> dict[str, float]:
    """Train a causal LM with DataStates lazy async checkpointing; register it in MLflow."""
    corpus = prepare_corpus(cfg.corpus, str(cfg.work_path("lm_train", "corpus")))
    trained = train_model(cfg.train_job(corpus["folder"]), cfg.launcher, tracker, cfg.log_every)
    evaluated = evaluate_model(
        cfg.model, cfg.train, trained["model_dir"], corpus["folder"], cfg.sample_prompt, cfg.sample_tokens
    )
    return record_run(tracker, corpus, trained, evaluated, cfg.model_name())
