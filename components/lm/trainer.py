"""One lm_train training run, the same code in one process or on every rank under torchrun.

`run_training(job)` builds the model, restores `job.resume` (model, AdamW, LR schedule, every RNG,
data position), trains with a lazy asynchronous checkpoint every `checkpoint.every` steps and saves
the model. `job.strategy` 'none' runs in the calling process; 'ddp' / 'fsdp' expect the process
group torchrun set up (components.lm.worker).

A fresh run never touches what an earlier run saved until it has a checkpoint of its own: when the
checkpoint folder holds committed checkpoints, the new run writes into a staging folder beside it;
once its first checkpoint is committed, the earlier run's folder is renamed aside (kept, not
deleted) and the staging folder takes its name. A run that fails before that leaves the earlier
checkpoints where `resume=latest` finds them.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import random
import shutil
import statistics
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from components.checkpoint import (
    CheckpointSettings,
    LazyAsyncCheckpointer,
    latest_checkpoint,
    list_checkpoints,
    set_aside_earlier_run,
)
from components.checkpoint.layout import fsync_dir
from components.lm import distributed, smollm2
from components.lm.corpus import TokenCorpus
from components.lm.distill import init_from_teacher_embedding
from components.lm.distributed import Ranks
from components.lm.model import GPT, GPTConfig
from components.lm.tokenizer import load_tokenizer
from components.lm.training import (
    TrainSettings,
    build_optimizer,
    build_scheduler,
    evaluate,
    train_loop,
)

STAGING_MARK = ".incoming-"
GPT_BUILDER = GPTConfig._target_  # the default model: this project's GPT


@dataclass
class TrainJob:
    """Everything a training run needs (written as JSON for torchrun's workers)."""

    model: GPTConfig
    train: TrainSettings
    checkpoint: CheckpointSettings
    corpus_folder: str
    run_dir: str  # the trained model's folder
    checkpoint_dir: str
    resume: Optional[str] = None  # 'latest' or a checkpoint folder
    seed: int = 0
    device: str = "cpu"  # cpu / cuda / auto
    strategy: str = "none"  # none (one process) | ddp | fsdp
    metrics_file: Optional[str] = None  # worker: rank 0 appends one JSON line per step here
    result_file: Optional[str] = None  # worker: rank 0 writes the result dict here
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:  # from JSON (torchrun's workers) the settings arrive as dicts
        if isinstance(self.model, dict):
            self.model = GPTConfig.from_dict(self.model)
        if isinstance(self.train, dict):
            self.train = TrainSettings(**self.train)
        if isinstance(self.checkpoint, dict):
            self.checkpoint = CheckpointSettings(**self.checkpoint)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> TrainJob:
        return cls(**json.loads(text))


def locate(dotted: str) -> Callable:
    """The function or class a `_target_` names (module.attribute)."""
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def build_model(config: GPTConfig | dict, device: str = "cpu") -> torch.nn.Module:
    """The model `config._target_` builds: our GPT from scratch, or SmolLM2-135M for fine-tuning."""
    config = GPTConfig.from_dict(config) if isinstance(config, dict) else config
    return locate(config._target_)(config, device)


def is_gpt(config: GPTConfig) -> bool:
    return config._target_ == GPT_BUILDER


def model_block_size(model: Any) -> int:
    return model.config.block_size if isinstance(model, GPT) else model.config.max_position_embeddings


def save_model(model: Any, folder: Path) -> Path:
    """GPT -> config.json + model.safetensors; SmolLM2 -> a transformers folder (+ tokenizer)."""
    if isinstance(model, GPT):
        return model.save(folder)
    model.save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(smollm2.cache_dir() / name, folder / name)
    return folder


def load_trained(config: GPTConfig, folder: str) -> torch.nn.Module:
    """The model `save_model` wrote to `folder`, in eval mode."""
    return GPT.from_folder(folder) if is_gpt(config) else smollm2.load_model(folder=folder)


@torch.no_grad()
def evaluate_saved(
    config: GPTConfig, folder: str, corpus_folder: str, settings: TrainSettings, prompt: str, sample_tokens: int
) -> dict:
    """Validation loss / perplexity of the model saved in `folder`, a greedy sample after `prompt`,
    and its parameter count."""
    model = load_trained(config, folder)
    metrics = evaluate(model, TokenCorpus(corpus_folder), settings)
    tokenizer = load_tokenizer()
    prompt_ids = torch.tensor([tokenizer.encode(prompt).ids])
    if isinstance(model, GPT):
        out = model.generate(prompt_ids, sample_tokens, temperature=0.0)
    else:
        out = model.generate(prompt_ids, max_new_tokens=sample_tokens, do_sample=False)
    return {
        "metrics": metrics,
        "sample": tokenizer.decode(out[0].tolist()),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def warm_start(model, folder: str) -> None:
    """Copy a saved GPT's weights into `model` (the same architecture), e.g. to train a draft further."""
    if not isinstance(model, GPT):
        raise ValueError("train.init_from needs the GPT model (model=gpt_small): a GPT folder written by this flow")
    source = GPT.from_folder(folder)
    if source.config != model.config:
        raise ValueError(
            f"train.init_from={folder} holds a GPT with {source.config}, "
            f"but model= builds {model.config}: set the model.* overrides to match it"
        )
    model.load_state_dict(source.state_dict())


class RunCheckpointer:
    """The run's LazyAsyncCheckpointer, writing to a staging folder until the first commit when the
    folder still holds an earlier run's checkpoints (see the module docstring)."""

    def __init__(
        self,
        folder: Path,
        settings: CheckpointSettings,
        optimizer,
        ranks: Ranks,
        device: str,
        replace_earlier: bool,
        logger,
    ):
        self.folder, self.settings, self.optimizer, self.ranks, self.device = folder, settings, optimizer, ranks, device
        self.logger = logger
        self.records: list = []
        self._staged_host_bytes = 0
        self.set_aside: Optional[Path] = None
        self.staging: Optional[Path] = None
        if replace_earlier:
            self.staging = Path(
                distributed.from_rank0(
                    str(folder.with_name(f"{folder.name}{STAGING_MARK}{uuid.uuid4().hex[:12]}")), ranks
                )
            )
        self.inner = self._open(self.staging or folder)

    def _open(self, folder: Path) -> LazyAsyncCheckpointer:
        ckpt = self.settings.open(folder, device=self.device, rank=self.ranks.rank, world_size=self.ranks.world_size)
        ckpt.attach(self.optimizer)
        return ckpt

    def save(self, step: int, state: dict) -> None:
        self.records.append(self.inner.save(step, state))
        if self.staging is not None:
            self._take_over_folder()

    def _take_over_folder(self) -> None:
        """The first checkpoint of a fresh run is committed: only now the earlier run moves aside."""
        self.inner.close()  # drains: this rank's shard is durable, and rank 0 has committed
        self._staged_host_bytes = self.inner.host_memory_bytes
        distributed.barrier(self.ranks)
        if self.ranks.rank == 0:
            self.set_aside = set_aside_earlier_run(self.folder)
            if self.folder.exists():  # no committed checkpoint left in it: only torn leftovers
                shutil.rmtree(self.folder)
            os.rename(self.staging, self.folder)
            fsync_dir(self.folder.parent)
            self.logger.warning(
                "a fresh run: its first checkpoint is committed, so the earlier run's checkpoints "
                "in %s were moved to %s",
                self.folder,
                self.set_aside,
            )
        distributed.barrier(self.ranks)
        self.staging = None
        self.inner = self._open(self.folder)

    def close(self) -> None:
        self.inner.close()  # the final drain: every requested checkpoint is durable

    @property
    def host_memory_bytes(self) -> int:
        return max(self.inner.host_memory_bytes, self._staged_host_bytes)


def _remove_torn_staging(folder: Path) -> None:
    """Staging folders of fresh runs that died before their first commit hold nothing restorable."""
    for path in folder.parent.glob(f"{folder.name}{STAGING_MARK}*"):
        if path.is_dir() and not list_checkpoints(path):
            shutil.rmtree(path, ignore_errors=True)


def resolve_resume(job: TrainJob, ranks: Ranks, logger) -> Optional[Path]:
    """The checkpoint to restore (rank 0 decides, every rank gets the same path), or None."""
    if not job.resume:
        return None
    folder = Path(job.checkpoint_dir)
    path = None
    if ranks.rank == 0:
        path = latest_checkpoint(folder) if job.resume == "latest" else Path(job.resume)
        if path is None:
            logger.warning("resume=latest but %s holds no committed checkpoint: starting fresh", folder)
    path = distributed.from_rank0(None if path is None else str(path), ranks)
    return None if path is None else Path(path)


def run_training(
    job: TrainJob, on_metrics: Optional[Callable[[int, dict], Any]] = None, logger=None, ranks: Optional[Ranks] = None
) -> dict:
    """Train to job.train.iters with a lazy async checkpoint every job.checkpoint.every steps
    (`ranks`: this process's place under torchrun; None: a single process)."""
    logger = logger or logging.getLogger("lm_train")
    ranks = ranks or Ranks()
    settings = job.train
    _seed_everything(job.seed, ranks)
    resume_path = resolve_resume(job, ranks, logger)
    corpus = TokenCorpus(job.corpus_folder)
    model, teacher = build_models(job, corpus, fresh=resume_path is None, logger=logger)
    if ranks.distributed:
        model = distributed.wrap_model(model, ranks, job.device)
        torch.manual_seed(job.seed + 1 + ranks.rank)  # each rank its own dropout stream
    optimizer = build_optimizer(model, settings)
    scheduler = build_scheduler(optimizer, settings)
    # each rank draws its own batches: train.batch_size is per rank
    data_generator = torch.Generator().manual_seed(job.seed + ranks.rank)
    start_step = 0
    if resume_path is not None:
        start_step = distributed.restore_checkpoint(resume_path, model, optimizer, scheduler, data_generator, ranks)
        logger.info("resumed from %s at step %d", resume_path, start_step)
    # the untrained model's validation loss: what training brings it down from
    initial = evaluate(model, corpus, settings, job.device) if start_step == 0 else {}
    checkpointer = open_run_checkpointer(job, optimizer, ranks, fresh=resume_path is None, logger=logger)
    try:
        summary = train_loop(
            model,
            optimizer,
            scheduler,
            corpus,
            settings,
            data_generator=data_generator,
            start_step=start_step,
            checkpointer=checkpointer,
            checkpoint_every=job.checkpoint.every,
            teacher=teacher,
            device=job.device,
            on_metrics=partial(_report, ranks=ranks, on_metrics=on_metrics),
            capture=partial(distributed.checkpoint_state, ranks=ranks),
        )
    finally:
        checkpointer.close()
    return {
        "model_dir": str(_save_final_model(job, model, ranks)),
        "start_step": start_step,
        "resumed_from": None if resume_path is None else str(resume_path),
        "final_step": settings.iters,
        "initial": initial,
        "summary": summary,
        "checkpoints": checkpoint_stats(checkpointer),
        "checkpoint_dir": job.checkpoint_dir,
        "world_size": ranks.world_size,
        "strategy": ranks.strategy,
        "earlier_run_moved_to": None if checkpointer.set_aside is None else str(checkpointer.set_aside),
    }


def _seed_everything(seed: int, ranks: Ranks) -> None:
    """Every RNG a checkpoint restores starts from the seed: runs are repeatable."""
    torch.manual_seed(seed)
    random.seed(seed + ranks.rank)
    np.random.seed(seed + ranks.rank)


def build_models(job: TrainJob, corpus: TokenCorpus, fresh: bool, logger) -> tuple[torch.nn.Module, Any]:
    """The model to train (checked against the corpus and the training length, warm-started when
    asked) and the distillation teacher (None without distillation). `fresh`: not resumed, so the
    initial weights come from `train.init_from` / the teacher; a resumed run keeps its own."""
    settings = job.train
    model = build_model(job.model, job.device)
    if settings.block_size > model_block_size(model):
        raise ValueError(
            f"train.block_size={settings.block_size} exceeds the model's context {model_block_size(model)}"
        )
    if corpus.vocab_size > model.config.vocab_size:
        raise ValueError(f"corpus vocabulary {corpus.vocab_size} exceeds the model's {model.config.vocab_size}")
    if settings.init_from and fresh:
        warm_start(model, settings.init_from)
        logger.info("weights initialised from %s", settings.init_from)
    if settings.distill_alpha <= 0:
        return model, None
    teacher = smollm2.load_model(dtype="float32", device=job.device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    if settings.init_from_teacher and fresh:
        kept = init_from_teacher_embedding(model, teacher)
        logger.info("draft embedding initialised from SmolLM2's (PCA keeps %.1f%% of its energy)", 100 * kept)
    return model, teacher


def open_run_checkpointer(job: TrainJob, optimizer, ranks: Ranks, fresh: bool, logger) -> RunCheckpointer:
    """The run's checkpointer; a fresh run stages its checkpoints beside an earlier run's (rank 0 decides)."""
    folder = Path(job.checkpoint_dir)
    earlier = False
    if ranks.rank == 0 and fresh:
        _remove_torn_staging(folder)
        earlier = bool(list_checkpoints(folder))
    earlier = distributed.from_rank0(earlier, ranks)
    return RunCheckpointer(folder, job.checkpoint, optimizer, ranks, job.device, earlier, logger)


def _report(step: int, metrics: dict, ranks: Ranks, on_metrics: Optional[Callable[[int, dict], Any]]) -> None:
    """A step's metrics to `on_metrics` on rank 0: under torch.distributed the job's loss and throughput."""
    if ranks.distributed:
        averaged = distributed.mean_over_ranks({k: metrics[k] for k in ("train_loss", "tokens_per_s")}, ranks)
        metrics = {**metrics, **averaged, "tokens_per_s": averaged["tokens_per_s"] * ranks.world_size}
    if on_metrics is not None and ranks.rank == 0:
        on_metrics(step, metrics)


def _save_final_model(job: TrainJob, model, ranks: Ranks) -> Path:
    if not ranks.distributed:
        return save_model(model.cpu().eval(), Path(job.run_dir))
    full = distributed.full_state_dict(model)  # a collective under FSDP2: every rank takes part
    if ranks.rank == 0:
        plain = build_model(job.model, "cpu")
        plain.load_state_dict(full)
        save_model(plain.eval(), Path(job.run_dir))
    distributed.barrier(ranks)
    return Path(job.run_dir)


def checkpoint_stats(checkpointer: Optional[RunCheckpointer]) -> dict:
    if checkpointer is None or not checkpointer.records:
        return {"count": 0}
    records = checkpointer.records
    durable = [r.durable_s for r in records if not math.isnan(r.durable_s)]
    return {
        "count": len(records),
        "bytes": records[-1].nbytes,
        "blocked_ms_median": 1e3 * statistics.median(r.blocked_s for r in records),
        "blocked_ms_total": 1e3 * sum(r.blocked_s for r in records),
        "durable_s_median": statistics.median(durable) if durable else float("nan"),
        "host_buffer_mb": checkpointer.host_memory_bytes / 2**20,
    }
