"""What the trained drafts (the exit adapter, the EAGLE head) share: the teacher replies they learn on,
the target's states over them, the split into train and validation, the target's read-out, the
training settings and the AdamW loop.

The target is the served native `LeanLlama`; its states over each teacher reply (prompt + the
target's own greedy reply) are the training data, and only reply positions count (`reply_start`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from components.checks import at_least, in_range, positive
from components.quant.native import LeanLlama


@dataclass
class DraftTraining:
    """How a draft module (the exit adapter, the EAGLE head) learns on the target's states over the replies."""

    steps: int = 400  # AdamW steps; each reads `batch_positions` positions (~0.1-0.3 s each on 2 cores)
    batch_positions: int = 128  # positions per step (their full-vocabulary KL is the step's cost)
    lr: float = 2.0e-3  # peak learning rate (cosine to lr/10); the adapter starts at the identity
    weight_decay: float = 0.0  # both modules are small and start near their identity: nothing to regularise towards
    val_fraction: float = 0.1  # sequences held out for the teacher-forced greedy agreement (α)

    def __post_init__(self) -> None:
        at_least("train.steps", self.steps, 1)
        at_least("train.batch_positions", self.batch_positions, 1)
        positive("train.lr", self.lr)
        at_least("train.weight_decay", self.weight_decay, 0.0)
        in_range("train.val_fraction", self.val_fraction, 0.01, 0.5)


def read_out(h: torch.Tensor, final_norm: torch.Tensor, head_weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Logits of residual-stream states h [N, hidden] through a final norm and a dense head [V, hidden]."""
    return F.linear(F.rms_norm(h, (h.shape[-1],), final_norm, eps), head_weight)


@dataclass
class ReadOut:
    """The target's shared final norm and head (dequantized, dense) that training reads states through."""

    final_norm: torch.Tensor
    head_weight: torch.Tensor  # [V, hidden]
    eps: float

    @classmethod
    def of(cls, target: LeanLlama) -> ReadOut:
        return cls(target.final_norm.float(), target.head.dequantize().float(), target.shape.eps)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        return read_out(h, self.final_norm, self.head_weight, self.eps)


def exit_trunk(lean: LeanLlama, layers: int) -> LeanLlama:
    """`lean`'s first `layers` layers without a head: forward gives the residual stream there (shared weights)."""
    total = lean.shape.layers
    if not 1 <= layers <= total:
        raise ValueError(f"an exit needs 1 <= layers <= {total} (the target's depth), got {layers}")
    shape = dataclasses.replace(lean.shape, layers=layers)
    return LeanLlama(shape, lean.layers[:layers], lean.final_norm, None, f"{lean.name}-exit{layers}", lean.embed)


@torch.no_grad()
def teacher_replies(
    target: LeanLlama, prompts: Sequence[Sequence[int]], new_tokens: int, stop_ids: Sequence[int] = ()
) -> list[list[int]]:
    """Each prompt followed by the target's greedy reply (up to `new_tokens`, through the first stop token)."""
    stops, out = set(stop_ids), []
    for prompt in prompts:
        logits, cache = target.forward(torch.tensor(list(prompt)))
        seq = list(prompt)
        for _ in range(new_tokens):
            nxt = int(logits[0, -1].argmax())
            seq.append(nxt)
            if nxt in stops or len(seq) >= target.max_context:
                break
            logits, cache = target.forward(torch.tensor([nxt]), cache)
        out.append(seq)
    return out


@dataclass
class TeacherReplies:
    """Where the sequences a draft learns on come from: teacher replies on disk, or written now."""

    # a folder of scripts/teacher_corpus.py's files (prompt + SmolLM2's greedy reply, one .txt each);
    # None: the target answers `count` of the teacher prompts (components/lm/teacher_prompts.py) now
    corpus: Optional[str] = None
    count: int = 96  # replies written now (corpus=None): ~96 x 64 tokens, ~4 min at ~25 tokens/s on 2 cores
    new_tokens: int = 64  # longest reply written now (the benchmark decodes 48-64 tokens)
    max_files: int = 2000  # corpus: at most this many files, in name order
    max_tokens: int = 256  # each sequence cut to this many tokens (the states of one prefill)

    def __post_init__(self) -> None:
        at_least("replies.count", self.count, 2)
        at_least("replies.new_tokens", self.new_tokens, 1)
        at_least("replies.max_files", self.max_files, 2)
        at_least("replies.max_tokens", self.max_tokens, 2)


def corpus_sequences(folder: str | Path, encode: Callable[[str], list[int]], max_files: int, max_tokens: int):
    """Token ids of the teacher-reply files (`*.txt`) in `folder`, each cut to `max_tokens`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"replies.corpus: {folder} is not a folder of teacher replies (teacher_corpus.py's)")
    files = sorted(folder.glob("*.txt"))[:max_files]
    if len(files) < 2:
        raise ValueError(f"replies.corpus: {folder} holds {len(files)} .txt files; a draft needs at least 2")
    return [encode(f.read_text(encoding="utf-8"))[:max_tokens] for f in files]


def reply_start(ids: Sequence[int], header: Sequence[int]) -> int:
    """Where the reply begins in a teacher file's tokens: after the last chat header (`header`, the
    assistant turn's opening tokens), else 0 (a code prompt: the whole file is code)."""
    n = len(header)
    for i in range(len(ids) - n, -1, -1):
        if n and list(ids[i : i + n]) == list(header):
            return i + n
    return 0


def split_states(states: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Whole sequences (any per-sequence items) to train and validation, at least one each: no sequence
    straddles the split."""
    if len(states) < 2:
        raise ValueError(f"a draft needs at least 2 sequences (train + validation), got {len(states)}")
    order = torch.randperm(len(states), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(len(states) - 1, max(1, round(val_fraction * len(states))))
    return [states[i] for i in order[n_val:]], [states[i] for i in order[:n_val]]


def layer_states(target: LeanLlama, layers: Sequence[int], sequences: Sequence[Sequence[int]]) -> list[tuple]:
    """Per sequence: the residual stream after each of `layers` layers (a tuple, each [T, hidden])."""
    trunks = [exit_trunk(target, n) for n in layers]
    out = []
    for seq in sequences:
        ids = torch.tensor(list(seq)[: target.max_context])
        out.append(tuple(trunk.forward(ids)[0][0] for trunk in trunks))
    return out


def cosine_lr(settings: DraftTraining, step: int) -> float:
    """The learning rate at `step` (1-based): cosine from `lr` down to lr/10 over `steps`."""
    return settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - 1) / settings.steps)))


def train_loop(
    module: torch.nn.Module,
    settings: DraftTraining,
    batch_loss: Callable[[torch.Generator], tuple[torch.Tensor, dict[str, float]]],
    seed: int = 0,
    log: Optional[Callable[[int, dict], None]] = None,
    log_every: int = 25,
) -> list[float]:
    """AdamW on `batch_loss(generator)` (the loss of one random batch, and figures to log beside it) for
    `settings.steps` steps on the cosine schedule, batches drawn from `seed`; returns every step's loss.
    Logged every `log_every` steps: each figure's mean over those steps, and the learning rate."""
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    losses: list[float] = []
    figures: list[dict[str, float]] = []
    module.train()
    for step in range(1, settings.steps + 1):
        lr = cosine_lr(settings, step)
        for group in opt.param_groups:
            group["lr"] = lr
        loss, parts = batch_loss(gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        figures.append(parts)
        if log is not None and (step % log_every == 0 or step == settings.steps):
            recent = figures[-log_every:]
            log(step, {**{k: sum(f[k] for f in recent) / len(recent) for k in recent[-1]}, "lr": lr})
    module.eval()
    return losses


def save_trained_draft(module: torch.nn.Module, folder: str | Path, files: tuple[str, str], info: dict) -> Path:
    """A trained draft in `folder`: its weights (safetensors) and its description (JSON), `files` =
    (weights file, description file)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights_file, meta_file = files
    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(folder / weights_file))
    (folder / meta_file).write_text(json.dumps(info, indent=1), encoding="utf-8")
    return folder


def trained_draft_files(folder: str | Path, files: tuple[str, str], what: str, train: str) -> tuple[Path, Path]:
    """The description and weights paths of the draft saved in `folder`; a missing one is named in
    the error with the command (`train`) that makes it."""
    folder = Path(folder)
    weights_path, meta_path = folder / files[0], folder / files[1]
    for path in (meta_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{what} draft: {path} is missing (train one with `{train}`)")
    return meta_path, weights_path
