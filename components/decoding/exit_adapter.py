"""Early-exit draft (Kangaroo / LayerSkip style): the native target's first layers plus a small trained adapter.

The draft runs the target's first `layers` decoder layers (the same packed weights, no copy) as one
compiled call that stops at the residual stream (`LeanLlama` without a head), maps that state with
an `ExitAdapter` towards the target's last-layer state, and reads it out through the target's own
final norm and head. Only the adapter is trained: on the target's hidden states over its own replies
(the teacher replies), with the KL from the target's next-token distribution at each position
(`train_exit_adapter`), so the loss aims straight at the draft's acceptance.

Files: `save_exit_adapter(folder)` writes `exit_adapter.safetensors` (the weights) and
`exit_adapter.json` (sizes, the target's name, training figures); `load_exit_adapter(folder)` reads
them back and names the file when one is missing or does not fit.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file

from components.checks import at_least
from components.decoding.cache import CausalLM
from components.decoding.draft_data import (
    DraftTraining,
    ReadOut,
    exit_trunk,
    layer_states,
    save_trained_draft,
    train_loop,
    trained_draft_files,
)
from components.quant.native import LeanLlama

WEIGHTS_FILE = "exit_adapter.safetensors"
META_FILE = "exit_adapter.json"


@dataclass
class ExitAdapterSettings:
    """The adapter's shape: which layer it reads, how wide its MLP is."""

    layers: int = 8  # the target's first 8 of SmolLM2's 30 layers: c ~2.2 (its Q8_0 head is a third of a step)
    width: int = 256  # inner width of the adapter's MLP: 2 x 576 x 256 weights, ~1% of the draft's step

    def __post_init__(self) -> None:
        at_least("adapter.layers", self.layers, 1)
        at_least("adapter.width", self.width, 1)


class ExitAdapter(torch.nn.Module):
    """x -> x + up(silu(down(rms_norm(x)))): a residual MLP on the exit layer's residual stream.

    Why this form: LayerSkip and Kangaroo show that a middle layer's residual stream is already
    partly readable through the final norm and head (the plain layer-skip draft), so the adapter
    only corrects it: the up projection starts at zero, training starts from the layer-skip draft and
    can only move away from it where that helps. An MLP (not a single linear map) because the
    missing layers' contribution is non-linear in the state; its own RMSNorm keeps the input scale
    fixed whatever the exit layer's residual norm. A low inner width keeps it ~1% of a draft step.
    """

    def __init__(self, hidden: int, width: int, eps: float = 1e-5):
        super().__init__()
        self.hidden, self.width, self.eps = hidden, width, eps
        self.norm = torch.nn.Parameter(torch.ones(hidden))
        self.down = torch.nn.Linear(hidden, width, bias=False)
        self.up = torch.nn.Linear(width, hidden, bias=False)
        torch.nn.init.zeros_(self.up.weight)  # the identity at the start: the plain layer-skip draft

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.silu(self.down(F.rms_norm(x, (self.hidden,), self.norm, self.eps))))


# --- the draft -------------------------------------------------------------------------------------


class ExitAdapterDraft(CausalLM):
    """The target's first layers (one compiled call), the adapter (torch), the target's final norm and head."""

    def __init__(self, target: LeanLlama, adapter: ExitAdapter, layers: int):
        if adapter.hidden != target.shape.hidden:
            raise ValueError(f"the adapter's width {adapter.hidden} differs from the target's {target.shape.hidden}")
        if layers >= target.shape.layers:
            raise ValueError(f"an exit draft needs fewer layers than the target's {target.shape.layers}, got {layers}")
        self.trunk = exit_trunk(target, layers)
        self.adapter = adapter.eval()
        self.final_norm, self.head, self.eps = target.final_norm, target.head, target.shape.eps
        self.name = f"{target.name}-L{layers}+adapter"
        self.vocab_size, self.max_context, self.device = target.vocab_size, target.max_context, target.device

    @torch.no_grad()
    def forward(self, ids, cache):
        x, cache = self.trunk.forward(ids, cache)
        h = self.adapter(x[0])
        logits = self.head.matmul(F.rms_norm(h, (h.shape[-1],), self.final_norm, self.eps))
        return logits.unsqueeze(0), cache

    def crop(self, cache, length):
        return self.trunk.crop(cache, length)

    @staticmethod
    def cache_length(cache):
        return 0 if cache is None else cache.length


# --- training data: the target's states over its own replies ------------------------------------------


@torch.no_grad()
def exit_states(target: LeanLlama, layers: int, sequences: Sequence[Sequence[int]]) -> list[tuple[torch.Tensor, ...]]:
    """Per sequence: (the residual stream after `layers` layers, after the last layer), each [T, hidden]."""
    return layer_states(target, (layers, target.shape.layers), sequences)


def reply_states(states: list, starts: Sequence[int]) -> list:
    """Each sequence's states from the position that predicts its reply's first token on: the prompt's
    chat template is the same in every file, so its positions would teach (and score) copying it."""
    out = []
    for (exit_x, last_x), start in zip(states, starts):
        first = max(0, min(start, exit_x.shape[0]) - 1)
        out.append((exit_x[first:], last_x[first:]))
    return out


def _stack(states: list) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([s[0] for s in states]), torch.cat([s[1] for s in states])


def exit_loss(adapter: ExitAdapter, exit_x: torch.Tensor, last_x: torch.Tensor, head: ReadOut) -> torch.Tensor:
    """KL(target's next-token distribution || the draft's), mean over positions."""
    with torch.no_grad():
        target_logp = F.log_softmax(head(last_x), -1)
    draft_logp = F.log_softmax(head(adapter(exit_x)), -1)
    return F.kl_div(draft_logp, target_logp, log_target=True, reduction="batchmean")


@torch.no_grad()
def evaluate_exit(adapter: ExitAdapter, states: list, head: ReadOut, chunk: int = 512) -> dict[str, float]:
    """Teacher-forced greedy agreement with the target (the draft's greedy α) and the KL, over `states`."""
    exit_x, last_x = _stack(states)
    agree, kl = 0, 0.0
    for i in range(0, exit_x.shape[0], chunk):
        a, b = exit_x[i : i + chunk], last_x[i : i + chunk]
        agree += int((head(adapter(a)).argmax(-1) == head(b).argmax(-1)).sum())
        kl += float(exit_loss(adapter, a, b, head)) * a.shape[0]
    n = max(1, exit_x.shape[0])
    return {"agreement": agree / n, "kl": kl / n, "positions": float(exit_x.shape[0])}


def train_exit_adapter(
    adapter: ExitAdapter,
    train_states: list,
    head: ReadOut,
    settings: DraftTraining,
    seed: int = 0,
    log: Optional[Callable[[int, dict], None]] = None,
    log_every: int = 25,
) -> list[float]:
    """AdamW on the KL at random training positions (`train_loop`: cosine schedule, batches drawn from
    `seed`); returns the loss of every step."""
    exit_x, last_x = _stack(train_states)

    def batch_loss(gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        idx = torch.randint(0, exit_x.shape[0], (settings.batch_positions,), generator=gen)
        loss = exit_loss(adapter, exit_x[idx], last_x[idx], head)
        return loss, {"train_kl": float(loss.detach())}

    return train_loop(adapter, settings, batch_loss, seed, log, log_every)


# --- files -------------------------------------------------------------------------------------------


def save_exit_adapter(adapter: ExitAdapter, layers: int, folder: str | Path, meta: Optional[dict] = None) -> Path:
    """Write the adapter's weights and its sizes (and `meta`: target name, training figures) to `folder`."""
    info = {"layers": layers, "hidden": adapter.hidden, "width": adapter.width, "eps": adapter.eps, **(meta or {})}
    return save_trained_draft(adapter, folder, (WEIGHTS_FILE, META_FILE), info)


def load_exit_adapter(folder: str | Path) -> tuple[ExitAdapter, dict]:
    """The adapter saved in `folder` and its metadata; a missing or unreadable file is named in the error."""
    meta_path, weights_path = trained_draft_files(
        folder, (WEIGHTS_FILE, META_FILE), "exit-adapter", "mlsys run draft_train draft=exit_adapter"
    )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        adapter = ExitAdapter(int(meta["hidden"]), int(meta["width"]), float(meta.get("eps", 1e-5)))
        int(meta["layers"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"exit-adapter draft: {meta_path} is not an adapter description ({err!r})") from err
    try:
        adapter.load_state_dict(load_file(str(weights_path)))
    except (SafetensorError, RuntimeError, OSError) as err:
        raise ValueError(f"exit-adapter draft: {weights_path} does not hold this adapter's weights ({err})") from err
    return adapter.eval(), meta
