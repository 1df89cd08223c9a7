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

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from components.checks import at_least, in_range, positive
from components.decoding.cache import CausalLM
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


@dataclass
class ExitAdapterTraining:
    """How the adapter is trained on the target's hidden states over the teacher replies."""

    steps: int = 400  # AdamW steps; each reads `batch_positions` positions (~0.1 s on 2 cores at SmolLM2's size)
    batch_positions: int = 128  # positions per step (their full-vocabulary KL is the step's cost)
    lr: float = 2.0e-3  # peak learning rate (cosine to lr/10); the adapter starts at the identity
    weight_decay: float = 0.0  # the adapter is tiny and starts at zero: nothing to regularise towards
    val_fraction: float = 0.1  # sequences held out for the teacher-forced greedy agreement (α)

    def __post_init__(self) -> None:
        at_least("train.steps", self.steps, 1)
        at_least("train.batch_positions", self.batch_positions, 1)
        positive("train.lr", self.lr)
        at_least("train.weight_decay", self.weight_decay, 0.0)
        in_range("train.val_fraction", self.val_fraction, 0.01, 0.5)


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


def read_out(h: torch.Tensor, final_norm: torch.Tensor, head_weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Logits of residual-stream states h [N, hidden] through a final norm and a dense head [V, hidden]."""
    return F.linear(F.rms_norm(h, (h.shape[-1],), final_norm, eps), head_weight)


# --- the draft -------------------------------------------------------------------------------------


def exit_trunk(lean: LeanLlama, layers: int) -> LeanLlama:
    """`lean`'s first `layers` layers without a head: forward gives the residual stream there (shared weights)."""
    total = lean.shape.layers
    if not 1 <= layers <= total:
        raise ValueError(f"an exit needs 1 <= layers <= {total} (the target's depth), got {layers}")
    shape = dataclasses.replace(lean.shape, layers=layers)
    return LeanLlama(shape, lean.layers[:layers], lean.final_norm, None, f"{lean.name}-exit{layers}", lean.embed)


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


@torch.no_grad()
def exit_states(target: LeanLlama, layers: int, sequences: Sequence[Sequence[int]]) -> list[tuple[torch.Tensor, ...]]:
    """Per sequence: (the residual stream after `layers` layers, after the last layer), each [T, hidden]."""
    trunk, full = exit_trunk(target, layers), exit_trunk(target, target.shape.layers)
    states = []
    for seq in sequences:
        ids = torch.tensor(list(seq)[: target.max_context])
        states.append((trunk.forward(ids)[0][0], full.forward(ids)[0][0]))
    return states


@dataclass
class TeacherReplies:
    """Where the sequences the adapter learns on come from: teacher replies on disk, or written now."""

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
        raise ValueError(f"replies.corpus: {folder} holds {len(files)} .txt files; the adapter needs at least 2")
    return [encode(f.read_text(encoding="utf-8"))[:max_tokens] for f in files]


def reply_start(ids: Sequence[int], header: Sequence[int]) -> int:
    """Where the reply begins in a teacher file's tokens: after the last chat header (`header`, the
    assistant turn's opening tokens), else 0 (a code prompt: the whole file is code)."""
    n = len(header)
    for i in range(len(ids) - n, -1, -1):
        if n and list(ids[i : i + n]) == list(header):
            return i + n
    return 0


def reply_states(states: list, starts: Sequence[int]) -> list:
    """Each sequence's states from the position that predicts its reply's first token on: the prompt's
    chat template is the same in every file, so its positions would teach (and score) copying it."""
    out = []
    for (exit_x, last_x), start in zip(states, starts):
        first = max(0, min(start, exit_x.shape[0]) - 1)
        out.append((exit_x[first:], last_x[first:]))
    return out


def split_states(states: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Whole sequences to train and validation (no sequence straddles the split); at least one each."""
    if len(states) < 2:
        raise ValueError(f"the exit adapter needs at least 2 sequences (train + validation), got {len(states)}")
    order = torch.randperm(len(states), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(len(states) - 1, max(1, round(val_fraction * len(states))))
    return [states[i] for i in order[n_val:]], [states[i] for i in order[:n_val]]


def _stack(states: list) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([s[0] for s in states]), torch.cat([s[1] for s in states])


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
    settings: ExitAdapterTraining,
    seed: int = 0,
    log: Optional[Callable[[int, dict], None]] = None,
    log_every: int = 25,
) -> list[float]:
    """AdamW on the KL at random training positions (cosine schedule, batches drawn from `seed`);
    returns the loss of every step."""
    exit_x, last_x = _stack(train_states)
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in adapter.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    losses = []
    adapter.train()
    for step in range(1, settings.steps + 1):
        lr = settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - 1) / settings.steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, exit_x.shape[0], (settings.batch_positions,), generator=gen)
        loss = exit_loss(adapter, exit_x[idx], last_x[idx], head)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if log is not None and (step % log_every == 0 or step == settings.steps):
            log(step, {"train_kl": sum(losses[-log_every:]) / len(losses[-log_every:]), "lr": lr})
    adapter.eval()
    return losses


# --- files -------------------------------------------------------------------------------------------


def save_exit_adapter(adapter: ExitAdapter, layers: int, folder: str | Path, meta: Optional[dict] = None) -> Path:
    """Write the adapter's weights and its sizes (and `meta`: target name, training figures) to `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in adapter.state_dict().items()}, str(folder / WEIGHTS_FILE))
    info = {"layers": layers, "hidden": adapter.hidden, "width": adapter.width, "eps": adapter.eps, **(meta or {})}
    (folder / META_FILE).write_text(json.dumps(info, indent=1), encoding="utf-8")
    return folder


def load_exit_adapter(folder: str | Path) -> tuple[ExitAdapter, dict]:
    """The adapter saved in `folder` and its metadata; a missing or unreadable file is named in the error."""
    folder = Path(folder)
    meta_path, weights_path = folder / META_FILE, folder / WEIGHTS_FILE
    for path in (meta_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"exit-adapter draft: {path} is missing (train one with `mlsys run draft_train`)")
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
