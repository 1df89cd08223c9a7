"""Prefect tasks of the `lm_train` flow: prepare the corpus, train (checkpointed, resumable), evaluate."""
from __future__ import annotations

import math
import shutil
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from tasks.progress import Progress
from tasks.tracking import Tracker


def build_model(model_cfg: Any, device: str = "cpu"):
    """Our GPT from its config fields, or SmolLM2-135M (transformers) for fine-tuning."""
    if model_cfg.kind == "gpt":
        from components.lm.model import GPT, GPTConfig

        fields = {k: getattr(model_cfg, k) for k in GPTConfig.__dataclass_fields__}
        return GPT(GPTConfig(**fields)).to(device)
    if model_cfg.kind == "smollm2":
        from components.lm import smollm2

        model = smollm2.load_model(dtype=model_cfg.dtype, device=device)
        model.config.use_cache = False
        return model.train()
    raise ValueError(f"model.kind must be 'gpt' or 'smollm2', got {model_cfg.kind!r}")


def model_block_size(model: Any) -> int:
    from components.lm.model import GPT

    return model.config.block_size if isinstance(model, GPT) else model.config.max_position_embeddings


def save_model(model: Any, folder: Path) -> Path:
    """GPT -> config.json + model.safetensors; SmolLM2 -> a transformers folder (+ tokenizer)."""
    from components.lm.model import GPT

    if isinstance(model, GPT):
        return model.save(folder)
    from components.lm import smollm2

    model.save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(smollm2.cache_dir() / name, folder / name)
    return folder


@task(name="lm-prepare-corpus")
def prepare_corpus(corpus_cfg: Any, cache_root: str) -> dict:
    """Tokenize the on-machine text once (cached by settings); return its folder and sizes."""
    from components.lm.corpus import CorpusSpec, TokenCorpus, build_corpus
    from components.lm.tokenizer import end_of_text_id, load_tokenizer, tokenizer_name

    spec = CorpusSpec(**asdict(corpus_cfg))
    tokenizer = load_tokenizer()
    folder = build_corpus(spec, Path(cache_root), tokenizer, tokenizer_name(), end_of_text_id(tokenizer))
    corpus = TokenCorpus(folder)
    info = {"folder": str(folder), "train_tokens": corpus.num_tokens("train"), "val_tokens": corpus.num_tokens("val"),
            "documents": sum(corpus.meta["documents"].values())}
    get_run_logger().info("corpus %s: %d train / %d val tokens", folder, info["train_tokens"], info["val_tokens"])
    return info


def warm_start(model, folder: str) -> None:
    """Copy a saved GPT's weights into `model` (the same architecture), e.g. to train a draft further."""
    from components.lm.model import GPT

    if not isinstance(model, GPT):
        raise ValueError("train.init_from needs model.kind=gpt (a GPT folder written by this flow)")
    source = GPT.from_folder(folder)
    if source.config != model.config:
        raise ValueError(f"train.init_from={folder} holds a GPT with {source.config}, but model= builds {model.config}: "
                         f"set the model.* overrides to match it")
    model.load_state_dict(source.state_dict())


@task(name="lm-train")
def train_model(cfg: Any, corpus_folder: str, run_dir: str, checkpoint_dir: str, tracker: Tracker) -> dict:
    """Train to cfg.train.iters with a lazy async checkpoint every cfg.checkpoint.every steps.

    `cfg.resume='latest'` (or a checkpoint folder) restores model, optimizer, LR schedule, RNG and data
    position from the newest committed checkpoint and continues from there.
    """
    import torch

    from components.checkpoint import (LazyAsyncCheckpointer, latest_checkpoint, load_checkpoint,
                                       set_aside_earlier_run)
    from components.lm.corpus import TokenCorpus
    from components.lm.training import (TrainSettings, build_optimizer, build_scheduler, restore_state,
                                        train_loop)

    logger = get_run_logger()
    device = cfg.torch_device()
    torch.manual_seed(cfg.seed)
    settings = TrainSettings(**asdict(cfg.train))
    model = build_model(cfg.model, device)
    if settings.block_size > model_block_size(model):
        raise ValueError(f"train.block_size={settings.block_size} exceeds the model's context {model_block_size(model)}")
    corpus = TokenCorpus(corpus_folder)
    if corpus.vocab_size > _vocab_size(model):
        raise ValueError(f"corpus vocabulary {corpus.vocab_size} exceeds the model's {_vocab_size(model)}")
    optimizer = build_optimizer(model, settings)
    scheduler = build_scheduler(optimizer, settings)
    data_generator = torch.Generator().manual_seed(cfg.seed)
    ckpt_dir = Path(checkpoint_dir)

    start_step, resumed_from = 0, None
    if cfg.resume:
        path = latest_checkpoint(ckpt_dir) if cfg.resume == "latest" else Path(cfg.resume)
        if path is None:
            logger.warning("resume=latest but %s holds no committed checkpoint: starting fresh", ckpt_dir)
        else:
            start_step = restore_state(load_checkpoint(path), model, optimizer, scheduler, data_generator)
            resumed_from = str(path)
            logger.info("resumed from %s at step %d", path, start_step)
    if settings.init_from and start_step == 0:  # a resumed run keeps its own trained weights
        warm_start(model, settings.init_from)
        logger.info("weights initialised from %s", settings.init_from)
    if resumed_from is None and cfg.checkpoint.every > 0:
        aside = set_aside_earlier_run(ckpt_dir)
        if aside is not None:
            logger.warning("a fresh run: the earlier run's checkpoints in %s were moved to %s", ckpt_dir, aside)

    teacher = None
    if settings.distill_alpha > 0:
        from components.lm import smollm2

        teacher = smollm2.load_model(dtype="float32", device=device)
        for p in teacher.parameters():
            p.requires_grad_(False)
        if settings.init_from_teacher and start_step == 0:  # a resumed run keeps its trained embedding
            from components.lm.distill import init_from_teacher_embedding

            kept = init_from_teacher_embedding(model, teacher)
            logger.info("draft embedding initialised from SmolLM2's (PCA keeps %.1f%% of its energy)", 100 * kept)

    checkpointer = None
    if cfg.checkpoint.every > 0:
        host_bytes = cfg.checkpoint.host_buffer_mb * 2**20 if cfg.checkpoint.host_buffer_mb else None
        checkpointer = LazyAsyncCheckpointer(
            ckpt_dir, keep_last=cfg.checkpoint.keep_last, host_buffer_bytes=host_bytes,
            buffer_slots=cfg.checkpoint.buffer_slots, flush_threads=cfg.checkpoint.flush_threads,
            fsync=cfg.checkpoint.fsync, checksum=cfg.checkpoint.checksum, device=device)
        checkpointer.attach(optimizer)

    progress = Progress(settings.iters, "lm-train", every=cfg.log_every, start=start_step)  # console + Prefect logs

    def log(step: int, metrics: dict) -> None:
        progress.update(step, metrics)
        if step % cfg.log_every == 0 or "val_loss" in metrics:
            tracker.log_metrics(metrics, step=step)

    try:
        summary = train_loop(model, optimizer, scheduler, corpus, settings, data_generator=data_generator,
                             start_step=start_step, checkpointer=checkpointer,
                             checkpoint_every=cfg.checkpoint.every, teacher=teacher, device=device, on_metrics=log)
    finally:
        if checkpointer is not None:
            checkpointer.close()  # the final drain: every requested checkpoint is durable
    model_dir = save_model(model.cpu().eval(), Path(run_dir))
    result = {"model_dir": str(model_dir), "start_step": start_step, "resumed_from": resumed_from,
              "final_step": settings.iters, "summary": summary,
              "checkpoints": _checkpoint_stats(checkpointer), "checkpoint_dir": str(ckpt_dir)}
    return result


def _vocab_size(model: Any) -> int:
    return model.config.vocab_size


def _checkpoint_stats(checkpointer: Any) -> dict:
    if checkpointer is None or not checkpointer.records:
        return {"count": 0}
    records = checkpointer.records
    return {
        "count": len(records),
        "bytes": records[-1].nbytes,
        "blocked_ms_median": 1e3 * statistics.median(r.blocked_s for r in records),
        "blocked_ms_total": 1e3 * sum(r.blocked_s for r in records),
        "durable_s_median": statistics.median(r.durable_s for r in records if not math.isnan(r.durable_s)),
        "host_buffer_mb": checkpointer.host_memory_bytes / 2**20,
    }


@task(name="lm-evaluate")
def evaluate_model(cfg: Any, model_dir: str, corpus_folder: str) -> dict:
    """Validation loss/perplexity of the saved model and a greedy sample of text."""
    import torch

    from components.lm.corpus import TokenCorpus
    from components.lm.model import GPT
    from components.lm.tokenizer import load_tokenizer
    from components.lm.training import TrainSettings, evaluate

    settings = TrainSettings(**asdict(cfg.train))
    if cfg.model.kind == "gpt":
        model = GPT.from_folder(model_dir)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    metrics = evaluate(model, TokenCorpus(corpus_folder), settings)
    tokenizer = load_tokenizer()
    prompt_ids = torch.tensor([tokenizer.encode(cfg.sample_prompt).ids])
    with torch.no_grad():
        if isinstance(model, GPT):
            out = model.generate(prompt_ids, cfg.sample_tokens, temperature=0.0)
        else:
            out = model.generate(prompt_ids, max_new_tokens=cfg.sample_tokens, do_sample=False)
    sample = tokenizer.decode(out[0].tolist())
    return {"metrics": metrics, "sample": sample, "parameters": sum(p.numel() for p in model.parameters())}
