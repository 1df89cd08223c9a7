"""`lm_train`: train a causal LM on on-machine text with DataStates lazy async checkpointing.

prepare corpus -> train (lazy async checkpoint every k steps; `resume=latest` continues bit-for-bit;
in this process or on several under torchrun, DDP or FSDP2, each rank writing its own shard)
-> evaluate validation loss / perplexity and a text sample -> log everything and register the model
in MLflow (the `serve` and `quantize` flows load it by name).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from components.checks import ConfigError, at_least, in_range, one_of, writable_folder
from components.lm.corpus import CorpusSpec
from components.lm.trainer import MODEL_KINDS
from components.lm.training import TrainSettings
from mlsys.flow import FlowConfig, system_flow
from mlsys.tracking import Tracker
from tasks.lm_train import evaluate_model, prepare_corpus, train_model


@dataclass
class LMModelConfig:
    """conf/model/*.yaml: our GPT (kind=gpt) or SmolLM2-135M fine-tuning (kind=smollm2)."""

    kind: str = "gpt"  # gpt: components.lm.model.GPT from scratch; smollm2: the packaged SmolLM2-135M
    vocab_size: int = 49152  # SmolLM2's tokenizer: the draft shares the target's vocabulary
    block_size: int = 256  # longest context the draft is trained for
    n_layer: int = 4  # ~4x fewer layers-per-token cost than the 30-layer target
    n_head: int = 4  # head_dim 64
    n_embd: int = 256  # tied embedding dominates the 16M parameters
    dropout: float = 0.0  # few-epoch training: no dropout needed
    bias: bool = False  # no biases (nanoGPT: slightly better, faster)
    tie_embeddings: bool = True  # lm_head = wte: half the parameters
    dtype: str = "float32"  # smollm2 only: weights' dtype for fine-tuning

    def __post_init__(self) -> None:
        one_of("model.kind", self.kind, MODEL_KINDS)
        one_of("model.dtype", self.dtype, ("float32", "bfloat16", "float16"))


@dataclass
class LauncherConfig:
    """conf/launcher/*.yaml: this process (local) or torchrun's processes (torchrun)."""

    kind: str = "local"  # local: train in the flow's process; torchrun: python -m torch.distributed.run
    nproc: int = 1  # processes per node (torchrun)
    nnodes: int = 1  # nodes; > 1 needs rdzv_endpoint and a work_dir every node sees at the same path
    strategy: str = "ddp"  # ddp: replicas, rank 0's shard holds the model; fsdp: FSDP2 fully_shard, every rank its part
    rdzv_endpoint: Optional[str] = None  # host:port of the c10d rendezvous; None on one node (--standalone)
    rdzv_id: Optional[str] = None  # the job's id on every node; None: the run name

    def __post_init__(self) -> None:
        one_of("launcher.kind", self.kind, ("local", "torchrun"))
        one_of("launcher.strategy", self.strategy, ("ddp", "fsdp"))
        at_least("launcher.nproc", self.nproc, 1)
        at_least("launcher.nnodes", self.nnodes, 1)
        if self.kind == "local" and self.nproc * self.nnodes > 1:
            raise ConfigError("launcher.nproc", self.nproc, "more than one process needs launcher=torchrun")
        if self.rdzv_endpoint is not None:
            match = re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d+)", self.rdzv_endpoint)
            if match is None:
                raise ConfigError("launcher.rdzv_endpoint", self.rdzv_endpoint, "must be host:port")
            in_range("launcher.rdzv_endpoint port", int(match.group(2)), 1, 65535)
        elif self.nnodes > 1:
            raise ConfigError(
                "launcher.rdzv_endpoint",
                None,
                f"launcher.nnodes={self.nnodes} needs the host:port every node meets at (e.g. node0:29400)",
            )


@dataclass
class CheckpointConfig:
    every: int = 10  # k: every 10 steps (k=1 works too; 190 MB per step mostly costs shared disk bandwidth)
    keep_last: int = 2  # committed checkpoints kept; older ones are deleted after each commit
    buffer_slots: int = (
        1  # host buffer = this many checkpoints; 1 suffices: the flush writes from the tensors themselves
    )
    host_buffer_mb: Optional[int] = None  # explicit host buffer size; None: buffer_slots x checkpoint size
    flush_threads: int = 2  # threads streaming host pieces to the file (I/O, not compute)
    fsync: bool = True  # durability: fsync shard, state, vote, COMMIT and directory
    checksum: bool = False  # CRC32 of every piece, verified at load (costs CPU time in the background)
    dir: Optional[str] = None  # None: <work_dir>/lm_train/checkpoints/<run_name>

    def __post_init__(self) -> None:
        at_least("checkpoint.every", self.every, 1)
        at_least("checkpoint.keep_last", self.keep_last, 1)
        at_least("checkpoint.buffer_slots", self.buffer_slots, 1)
        at_least("checkpoint.flush_threads", self.flush_threads, 1)
        if self.host_buffer_mb is not None:
            at_least("checkpoint.host_buffer_mb", self.host_buffer_mb, 1)
        if self.dir is not None:
            writable_folder("checkpoint.dir", self.dir)


@dataclass
class LMTrainConfig(FlowConfig):
    model: LMModelConfig = field(default_factory=LMModelConfig)
    corpus: CorpusSpec = field(default_factory=CorpusSpec)
    train: TrainSettings = field(default_factory=TrainSettings)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
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


def run_name_for(cfg: LMTrainConfig) -> str:
    return cfg.run_name or ("draft" if cfg.model.kind == "gpt" else "smollm2_ft")


def registered_name_for(cfg: LMTrainConfig) -> str:
    if cfg.registered_name:
        return cfg.registered_name
    return "lm-draft" if cfg.model.kind == "gpt" else "lm-smollm2-ft"


@system_flow(
    name="lm_train",
    config=LMTrainConfig,
    order=10,
    summary_metric="val_perplexity",
    quality="val_perplexity<=500",  # a draft this good may become lm-draft@serving
)
def lm_train(cfg: LMTrainConfig, tracker: Tracker) -> dict[str, float]:
    """Train a causal LM with DataStates lazy async checkpointing; register it in MLflow."""
    corpus = prepare_corpus(cfg.corpus, str(cfg.work_path("lm_train", "corpus")))
    tracker.log_params({f"corpus_{k}": v for k, v in corpus.items() if k != "folder"})
    run_dir = cfg.work_path("lm_train", run_name_for(cfg))  # the model files only: logged as the MLflow model
    ckpt_dir = cfg.checkpoint.dir or str(cfg.work_path("lm_train", "checkpoints", run_name_for(cfg)))
    trained = train_model(cfg, corpus["folder"], str(run_dir), ckpt_dir, tracker)
    tracker.log_metrics({f"ckpt_{k}": v for k, v in trained["checkpoints"].items()})
    tracker.set_tags({"resumed_from": trained["resumed_from"], "checkpoint_dir": trained["checkpoint_dir"]})
    evaluated = evaluate_model(cfg, trained["model_dir"], corpus["folder"])
    tracker.log_metrics({**evaluated["metrics"], "parameters": evaluated["parameters"]}, step=cfg.train.iters)
    tracker.log_text(evaluated["sample"], "samples/greedy.txt")
    tracker.log_dict({"corpus": corpus, "train": trained, "eval": evaluated}, "summary.json")
    version = tracker.log_model_dir(trained["model_dir"], "model", registered_name=registered_name_for(cfg))
    tracker.set_tags({"registered_model": f"{registered_name_for(cfg)}/{version}"})
    return {
        **evaluated["metrics"],
        "start_step": float(trained["start_step"]),
        "checkpoints": float(trained["checkpoints"]["count"]),
    }
