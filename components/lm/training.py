"""The training loop: plain PyTorch, checkpointed lazily at iteration boundaries, resumable bit-for-bit.

Everything that decides the next iteration lives in the checkpoint: parameters, AdamW moments, the
LR schedule, every RNG (torch, CUDA, Python, NumPy) and the data sampler's own generator (the data
position). Restoring all of it makes training continued after a restore identical to training that
never stopped.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from components.lm.corpus import TokenCorpus
from components.lm.model import GPT, lm_loss


@dataclass
class TrainSettings:
    iters: int = 300  # optimizer steps; ~0.3M tokens: what 2 shared CPU cores train in under an hour
    batch_size: int = 8  # sequences per step
    block_size: int = 128  # tokens per sequence (<= the model's block_size); drafts look ahead a few tokens
    lr: float = 1e-3  # peak AdamW learning rate: small models tolerate a high rate
    min_lr: float = 1e-4  # cosine floor (lr / 10, as Chinchilla)
    warmup_iters: int = 30  # linear warm-up (10% of the steps): keeps early Adam updates from blowing up
    weight_decay: float = 0.1  # on matrices only, not on norms/embeddings' biases
    beta1: float = 0.9
    beta2: float = 0.95  # shorter second-moment memory: steadier for small batches (nanoGPT)
    grad_clip: float = 1.0  # clip global grad norm: guards against rare loss spikes
    eval_every: int = 100  # validation loss every this many steps (and at the end)
    eval_batches: int = 4  # fixed validation windows per evaluation
    distill_alpha: float = 0.0  # weight of the KL to the teacher's logits (0: plain next-token loss)
    distill_temperature: float = 1.0  # softening of both distributions in the KL
    init_from_teacher: bool = False  # start the draft's tied embedding from SmolLM2's (PCA-projected)
    init_from: Optional[str] = (
        None  # a saved GPT folder (e.g. data/lm_train/draft): continue training its weights on new data
    )

    def __post_init__(self) -> None:
        for name in ("iters", "batch_size", "block_size", "eval_every", "eval_batches", "lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.distill_alpha <= 1.0:
            raise ValueError(f"train.distill_alpha must be in [0, 1], got {self.distill_alpha}")
        if self.distill_temperature <= 0:
            raise ValueError(f"train.distill_temperature must be positive, got {self.distill_temperature}")
        if self.init_from_teacher and self.distill_alpha == 0:
            raise ValueError("train.init_from_teacher needs the teacher: set train.distill_alpha > 0")
        if self.init_from and self.init_from_teacher:
            raise ValueError("train.init_from and train.init_from_teacher both set the draft's weights: choose one")


def forward_logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits of our GPT (returns (logits, cache)) or a transformers causal LM (returns .logits)."""
    inner = getattr(model, "module", model)  # DistributedDataParallel wraps the model
    if isinstance(inner, GPT):
        return model(input_ids, use_cache=False)[0]
    return model(input_ids=input_ids, use_cache=False).logits


def build_optimizer(model: torch.nn.Module, settings: TrainSettings) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The default (foreach) update is deterministic for a given thread count, so restores stay bitwise.
    return torch.optim.AdamW(groups, lr=settings.lr, betas=(settings.beta1, settings.beta2))


def warmup_cosine(step: int, warmup: int, total: int, floor: float) -> float:
    """The LR as a fraction of its peak: linear warm-up over `warmup` steps, then a cosine down to
    `floor` at step `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, settings: TrainSettings) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: warmup_cosine(step, settings.warmup_iters, settings.iters, settings.min_lr / settings.lr),
    )


def capture_state(
    step: int, model, optimizer, scheduler, data_generator: torch.Generator, extra: Optional[dict] = None
) -> dict:
    """The complete training state at an iteration boundary (tensors are live: copy lazily)."""
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng,
        "data": data_generator.get_state(),
        "extra": extra or {},
    }


def restore_state(state: dict, model, optimizer, scheduler, data_generator: torch.Generator) -> int:
    """Load a captured state into live objects; returns the step to continue from."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    data_generator.set_state(state["data"])
    return int(state["step"])


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened distributions, scaled by T^2 (Hinton et al.)."""
    t = temperature
    vocab = student_logits.size(-1)
    student = F.log_softmax(student_logits.reshape(-1, vocab).float() / t, dim=-1)
    teacher = F.log_softmax(teacher_logits.reshape(-1, vocab).float() / t, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * t * t


@torch.no_grad()
def evaluate(model, corpus: TokenCorpus, settings: TrainSettings, device: str = "cpu") -> dict[str, float]:
    was_training = model.training
    model.eval()
    losses = []
    for x, y in corpus.eval_batches("val", settings.batch_size, settings.block_size, settings.eval_batches):
        losses.append(lm_loss(forward_logits(model, x.to(device)), y.to(device)).item())
    model.train(was_training)
    loss = float(np.mean(losses))
    return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50.0))}


def train_loop(
    model,
    optimizer,
    scheduler,
    corpus: TokenCorpus,
    settings: TrainSettings,
    *,
    data_generator: torch.Generator,
    start_step: int = 0,
    stop_step: Optional[int] = None,
    checkpointer=None,
    checkpoint_every: int = 0,
    teacher=None,
    device: str = "cpu",
    on_metrics: Optional[Callable[[int, dict], Any]] = None,
    capture: Callable[..., dict] = capture_state,
) -> dict[str, float]:
    """Train from `start_step` to `stop_step` (default settings.iters); checkpoint every k steps.

    The checkpoint is requested right after the optimizer step (the iteration boundary); the
    checkpointer's pre-step hook, attached to `optimizer`, holds the next update until the lazy
    copy is done. `capture(step, model, optimizer, scheduler, data_generator)` is what is saved
    (a rank's own part under torch.distributed).
    """
    stop_step = settings.iters if stop_step is None else stop_step
    model.train()
    summary: dict[str, float] = {}
    compute_s = 0.0
    for step in range(start_step, stop_step):
        t0 = time.perf_counter()
        x, y = corpus.get_batch("train", settings.batch_size, settings.block_size, data_generator)
        x, y = x.to(device), y.to(device)
        logits = forward_logits(model, x)
        ce = lm_loss(logits, y)
        loss = ce
        metrics = {"train_loss": ce.item()}
        if teacher is not None and settings.distill_alpha > 0:
            with torch.no_grad():
                teacher_logits = forward_logits(teacher, x)
            kd = distillation_loss(logits, teacher_logits, settings.distill_temperature)
            loss = settings.distill_alpha * kd + (1 - settings.distill_alpha) * ce
            metrics["distill_kl"] = kd.item()
        loss.backward()
        if settings.grad_clip > 0:
            metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip))
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        if checkpointer is not None and checkpoint_every > 0 and done % checkpoint_every == 0:
            checkpointer.save(done, capture(done, model, optimizer, scheduler, data_generator))
        compute_s += time.perf_counter() - t0
        if done % settings.eval_every == 0 or done == stop_step:
            metrics.update(evaluate(model, corpus, settings, device))
        metrics["tokens_per_s"] = settings.batch_size * settings.block_size * (done - start_step) / compute_s
        summary = metrics
        if on_metrics is not None:
            on_metrics(done, metrics)
    return summary
