"""EAGLE-style draft head: one decoder layer over the target's last hidden state and the next token's
embedding, predicting the target's next hidden state, read out through the target's own head.

EAGLE (Li et al., 2024) drafts at the feature level: at position t the head takes the target's
state f_t (the vector its LM head reads) and the embedding of token t+1, maps their concatenation to
the model width (`fc`), runs one Llama decoder layer (the project's own, `native.decoder_layer`, with
its own KV cache) and outputs f̂_{t+1}, the predicted state at t+1; the target's head turns it into
the next token's logits. Drafting γ tokens runs the head autoregressively on its own predictions
(f̂ in place of f for the positions the target has not seen); once the target has verified a block,
its true states replace the predicted ones (the head recomputes those positions).

The state is the target's last layer's residual stream AFTER its final norm: the feature EAGLE uses
(the output of the base model, the LM head's input). Why that one: the head's prediction then reads
out through the LM head alone, with nothing between (the final norm is already inside the feature);
the norm fixes its scale, so the smooth-L1 regression works on one well-conditioned scale, where the
pre-norm stream carries the few huge outlier dimensions Llamas grow; and it is what the target
computes anyway right before its head, so handing it to the draft costs no extra compute
(`LeanLlama.forward_states`).

Optionally the head reads out only the N tokens most frequent in the teacher replies
(`EagleHeadSettings.vocab`): the head's product shrinks from the whole vocabulary (49152 rows for
SmolLM2, most of the draft's step) to N dense rows; the other tokens get probability 0 in the draft,
which the verdict keeps lossless (the target's residual resamples them).

The engine hands the target's states to the draft between rounds (`SequenceRunner.hand_states`,
`CausalLM.reads_target_states`), so proposals never depend on the workers' timing.

Files: `save_eagle_head(folder)` writes `eagle_head.safetensors` and `eagle_head.json`;
`load_eagle_head(folder)` reads them back and names the file when one is missing or does not fit.
"""

from __future__ import annotations

import dataclasses
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
    exit_trunk,
    save_trained_draft,
    train_loop,
    trained_draft_files,
)
from components.quant.native import LeanLayer, LeanLlama, LlamaShape, decoder_layer, rope_tables

WEIGHTS_FILE = "eagle_head.safetensors"
META_FILE = "eagle_head.json"
SHAPE_KEYS = ("hidden", "intermediate", "heads", "kv_heads", "head_dim", "vocab", "rope_theta", "eps", "max_positions")


@dataclass
class EagleHeadSettings:
    """The EAGLE head's read-out and the parts of its loss that the exit adapter does not have."""

    # 0: read out the whole vocabulary (EAGLE as published); N > 0: only the N tokens most frequent in the
    # training replies (SmolLM2's 49152-row head is most of the draft's step; 4096 dense rows are ~1/12 of it)
    vocab: int = 0
    # weight of the cross-entropy against the target's next-token distribution beside the smooth-L1 on the
    # state (EAGLE's w_cls = 0.1: the state regression carries most of the signal)
    cls_weight: float = 0.1
    # uniform noise on the input states, ± this fraction of their RMS (EAGLE adds U(-0.1, 0.1) at LLaMA's
    # feature scale): drafting feeds the head its own, imperfect predictions
    noise: float = 0.1

    def __post_init__(self) -> None:
        at_least("eagle.vocab", self.vocab, 0)
        at_least("eagle.cls_weight", self.cls_weight, 0.0)
        at_least("eagle.noise", self.noise, 0.0)


class _Weight:
    """A trainable weight with the `.matmul` the project's matrices have (what `decoder_layer` calls)."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class EagleHead(torch.nn.Module):
    """fc(concat(embedding of token t+1, state f_t)) -> one Llama decoder layer -> predicted state f̂_{t+1}.

    The layer has the target's sizes (heads, grouped KV heads, MLP width, rotary base), so it is the
    target's own block (`decoder_layer`), trained. `vocab_ids`: the tokens the head reads out (empty: all).
    """

    def __init__(self, shape: LlamaShape, vocab_ids: Optional[torch.Tensor] = None):
        super().__init__()
        self.shape = dataclasses.replace(shape, layers=1)
        h, nq, nkv = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
        self.fc = torch.nn.Linear(2 * h, h, bias=True)  # EAGLE's fc keeps its bias
        self.attn_norm = torch.nn.Parameter(torch.ones(h))
        self.ffn_norm = torch.nn.Parameter(torch.ones(h))
        self.qkv = torch.nn.Linear(h, nq + 2 * nkv, bias=False)
        self.o = torch.nn.Linear(nq, h, bias=False)
        self.gate_up = torch.nn.Linear(h, 2 * shape.intermediate, bias=False)
        self.down = torch.nn.Linear(shape.intermediate, h, bias=False)
        ids = torch.zeros(0, dtype=torch.long) if vocab_ids is None else vocab_ids.long().flatten()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= shape.vocab):
            raise ValueError(f"the head's read-out tokens must lie in [0, {shape.vocab}), got {ids.min()}..{ids.max()}")
        self.register_buffer("vocab_ids", ids)
        cos, sin = rope_tables(shape)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    @property
    def restricted(self) -> bool:
        return self.vocab_ids.numel() > 0

    def layer(self) -> LeanLayer:
        return LeanLayer(
            self.attn_norm, _Weight(self.qkv.weight), _Weight(self.o.weight), self.ffn_norm,
            _Weight(self.gate_up.weight), _Weight(self.down.weight),
        )  # fmt: skip

    def new_kv(self, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
        sh = self.shape
        k = torch.zeros(sh.kv_heads, capacity, sh.head_dim)
        return k, torch.zeros_like(k)

    def forward(
        self, states: torch.Tensor, embeds: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: int
    ) -> torch.Tensor:
        """Predicted states [T, hidden] at positions pos..pos+T-1 from the states before each (`states`:
        f at positions pos-1.., zeros before position 0) and the tokens' embeddings there; k/v: its cache."""
        sh, T = self.shape, states.shape[0]
        if states.shape != embeds.shape or states.shape[-1] != sh.hidden:
            raise ValueError(
                f"states and embeddings must both be [T, {sh.hidden}], "
                f"got {tuple(states.shape)} and {tuple(embeds.shape)}"
            )
        if pos + T > min(k.shape[1], sh.max_positions):
            raise ValueError(f"positions {pos}..{pos + T} exceed the head's cache of {k.shape[1]}")
        x = self.fc(torch.cat([embeds, states], -1))
        return decoder_layer(x, self.layer(), k, v, pos, self.cos[pos : pos + T], self.sin[pos : pos + T], sh)

    def logits(self, states: torch.Tensor, head_weight: torch.Tensor) -> torch.Tensor:
        """The head's logits over its read-out tokens [N, V or len(vocab_ids)] through the dense head [V, hidden]."""
        return F.linear(states, head_weight[self.vocab_ids] if self.restricted else head_weight)


def frequent_tokens(sequences: Sequence[Sequence[int]], starts: Sequence[int], n: int, vocab: int) -> torch.Tensor:
    """The `n` tokens most frequent in the replies (from each sequence's start on), ties by id; sorted."""
    counts = torch.zeros(vocab, dtype=torch.long)
    for seq, start in zip(sequences, starts):
        counts += torch.bincount(torch.tensor(list(seq[start:]), dtype=torch.long), minlength=vocab)[:vocab]
    order = sorted(range(vocab), key=lambda t: (-int(counts[t]), t))[: min(n, vocab)]
    return torch.tensor(sorted(order), dtype=torch.long)


# --- the draft -------------------------------------------------------------------------------------


class EagleCache:
    """One sequence's draft state: the head's KV cache and predicted states over `length` positions
    (`tokens`), how many leading ones were computed from the target's states (`exact`), and the target's
    states handed so far (`target_states` over `target_tokens`)."""

    def __init__(self, head: EagleHead, capacity: int = 256):
        self.head = head
        self.length = self.exact = 0
        self.tokens: list[int] = []
        self.target_tokens: list[int] = []
        hidden = head.shape.hidden
        self.k, self.v = head.new_kv(capacity)
        self.own = torch.zeros(capacity, hidden)  # the head's predicted state at each position
        self.target_states = torch.zeros(capacity, hidden)

    def reserve(self, total: int) -> None:
        cap = self.k.shape[1]
        if total > cap:
            grow = max(total, 2 * cap) - cap
            self.k, self.v = F.pad(self.k, (0, 0, 0, grow)), F.pad(self.v, (0, 0, 0, grow))
            self.own, self.target_states = F.pad(self.own, (0, 0, 0, grow)), F.pad(self.target_states, (0, 0, 0, grow))

    def usable(self, context: Sequence[int]) -> int:
        """Positions of `context` whose target states this cache holds (the common prefix)."""
        n = min(len(context), len(self.target_tokens))
        for i in range(n):
            if self.target_tokens[i] != context[i]:
                return i
        return n


class EagleHeadDraft(CausalLM):
    """The EAGLE head over the native target: the target's embedding in, the target's head out, the
    target's states handed between rounds (`reads_target_states`)."""

    reads_target_states = True

    def __init__(self, target: LeanLlama, head: EagleHead):
        sh = target.shape
        mine = head.shape
        if (mine.hidden, mine.heads, mine.kv_heads, mine.head_dim, mine.vocab) != (
            sh.hidden, sh.heads, sh.kv_heads, sh.head_dim, sh.vocab,
        ):  # fmt: skip
            raise ValueError(
                f"the EAGLE head was trained for hidden size {mine.hidden}, {mine.heads} heads, vocabulary "
                f"{mine.vocab}; the target has hidden size {sh.hidden}, {sh.heads} heads, vocabulary {sh.vocab}"
            )
        self.head = head.eval()
        self.embed, self.lm_head = target.embed, target.head
        self.sub_head = target.head.rows(head.vocab_ids).float().contiguous() if head.restricted else None
        self.name = f"{target.name}-eagle" + (f"-v{head.vocab_ids.numel()}" if head.restricted else "")
        self.vocab_size, self.device = target.vocab_size, target.device
        self.max_context = min(target.max_context, mine.max_positions)

    def new_cache(self) -> EagleCache:
        return EagleCache(self.head)

    def read_out(self, states: torch.Tensor) -> torch.Tensor:
        """Logits [N, V] of predicted states: the target's head, or its dense rows of the read-out tokens
        (every other token -inf: probability 0 in the draft)."""
        if self.sub_head is None:
            return self.lm_head.matmul(states.contiguous())
        out = torch.full((states.shape[0], self.vocab_size), float("-inf"))
        out[:, self.head.vocab_ids] = F.linear(states, self.sub_head)
        return out

    def take_target_states(self, cache, tokens, start, states):
        cache = cache if cache is not None else self.new_cache()
        if start > len(cache.target_tokens):  # a gap: the states before `start` were never handed
            cache.target_tokens = []
            return cache
        end = start + states.shape[0]
        cache.reserve(end)
        cache.target_states[start:end] = states
        cache.target_tokens = list(tokens[:end])
        return cache

    @torch.no_grad()
    def forward(self, ids, cache):
        cache = cache if cache is not None else self.new_cache()
        new = ids.reshape(-1).tolist()
        context = cache.tokens[: cache.length] + new
        total = len(context)
        usable = cache.usable(context)
        # positions computed from the head's own predictions that the target's states now cover: recompute
        first = cache.exact if cache.exact < cache.length and usable > cache.exact else cache.length
        cache.reserve(total)
        embeds = self.embed.rows(torch.tensor(context[first:])).float()
        # positions first..batch_end-1 read the target's state before them: one pass
        batch_end = min(total, max(first, usable + 1))
        if batch_end > first:
            before = self._states_before(cache, first, batch_end, usable)
            cache.own[first:batch_end] = self.head(before, embeds[: batch_end - first], cache.k, cache.v, first)
        for p in range(batch_end, total):  # the rest read the head's own prediction before them: one by one
            before = self._states_before(cache, p, p + 1, usable)
            cache.own[p : p + 1] = self.head(before, embeds[p - first : p - first + 1], cache.k, cache.v, p)
        if first == cache.exact:
            cache.exact = max(cache.exact, batch_end)
        cache.tokens, cache.length = context, total
        return self.read_out(cache.own[total - len(new) : total]).unsqueeze(0), cache

    @staticmethod
    def _states_before(cache: EagleCache, first: int, end: int, usable: int) -> torch.Tensor:
        """The state before each position first..end-1: the target's where handed, else the head's own
        prediction, zeros before position 0."""
        out = torch.zeros(end - first, cache.own.shape[1])
        for p in range(max(first, 1), end):
            out[p - first] = cache.target_states[p - 1] if p - 1 < usable else cache.own[p - 1]
        return out

    def crop(self, cache, length):
        if cache is not None and length < cache.length:
            cache.length = max(0, length)
            cache.exact = min(cache.exact, cache.length)
        return cache

    @staticmethod
    def cache_length(cache):
        return 0 if cache is None else cache.length


# --- training: the target's states over its replies ---------------------------------------------------


@dataclass
class EagleSequence:
    """One teacher reply as the head learns it: tokens, their embeddings and the target's states [T, hidden],
    and where the reply starts (only positions from the one predicting the reply's first token count)."""

    tokens: torch.Tensor
    embeds: torch.Tensor
    states: torch.Tensor
    start: int

    @property
    def first(self) -> int:
        """The first position whose loss counts: the head's output at position t is the state at t, whose
        logits give token t+1, so the reply's first token is predicted at start - 1 (position 0 has no
        state before it and never counts)."""
        return max(1, min(self.start, self.tokens.numel()) - 1)

    @property
    def positions(self) -> int:
        return max(0, self.tokens.numel() - self.first)


@torch.no_grad()
def eagle_sequences(target: LeanLlama, sequences: Sequence[Sequence[int]], starts: Sequence[int]) -> list:
    """Per teacher reply: its tokens, their embeddings and the target's states (last layer, final norm)."""
    trunk, sh = exit_trunk(target, target.shape.layers), target.shape
    out = []
    for seq, start in zip(sequences, starts):
        ids = torch.tensor(list(seq)[: target.max_context])
        x = trunk.forward(ids)[0][0]
        states = F.rms_norm(x, (sh.hidden,), target.final_norm.float(), sh.eps)
        out.append(EagleSequence(ids, target.embed.rows(ids).float(), states, int(start)))
    return out


def _shifted(states: torch.Tensor) -> torch.Tensor:
    """The state before each position (zeros before position 0): the head's input."""
    return torch.cat([torch.zeros_like(states[:1]), states[:-1]])


def eagle_loss(
    head: EagleHead, seq: EagleSequence, head_weight: torch.Tensor, noise_scale: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Over one sequence's counted positions: (smooth L1 of the predicted state vs the target's, the
    cross-entropy of the head's logits vs the target's next-token distribution over the same read-out
    tokens, teacher-forced greedy agreement count, positions)."""
    before = _shifted(seq.states)
    if noise_scale > 0:
        before = before + (torch.rand_like(before) * 2 - 1) * noise_scale
    k, v = head.new_kv(seq.tokens.numel())
    predicted = head(before, seq.embeds, k, v, 0)[seq.first :]
    truth = seq.states[seq.first :]
    reg = F.smooth_l1_loss(predicted, truth)
    with torch.no_grad():
        target_logits = F.linear(truth, head_weight)  # the whole vocabulary: the target's greedy token
        target_p = F.softmax(target_logits[:, head.vocab_ids] if head.restricted else target_logits, -1)
    logits = head.logits(predicted, head_weight)
    ce = -(target_p * F.log_softmax(logits, -1)).sum(-1).mean()
    picked = head.vocab_ids[logits.argmax(-1)] if head.restricted else logits.argmax(-1)
    agree = int((picked == target_logits.argmax(-1)).sum())
    return reg, ce, torch.tensor(float(agree)), truth.shape[0]


@torch.no_grad()
def evaluate_eagle(head: EagleHead, sequences: list, head_weight: torch.Tensor) -> dict:
    """Teacher-forced greedy agreement with the target (the head's one-step greedy α), the smooth L1 and
    the cross-entropy, over the counted positions of `sequences`."""
    head.eval()
    agree = reg = ce = 0.0
    n = 0
    for seq in sequences:
        if seq.positions == 0:
            continue
        r, c, a, count = eagle_loss(head, seq, head_weight)
        reg, ce, agree, n = reg + float(r) * count, ce + float(c) * count, agree + float(a), n + count
    n_ = max(1, n)
    return {"agreement": agree / n_, "smooth_l1": reg / n_, "ce": ce / n_, "positions": float(n)}


def train_eagle_head(
    head: EagleHead,
    train_sequences: list,
    head_weight: torch.Tensor,
    settings: DraftTraining,
    eagle: EagleHeadSettings,
    seed: int = 0,
    log: Optional[Callable[[int, dict], None]] = None,
    log_every: int = 25,
) -> list[float]:
    """AdamW (`train_loop`) on smooth L1 + cls_weight × cross-entropy over random teacher replies, about
    `batch_positions` counted positions per step, noise on the input states; the loss of every step."""
    usable = [s for s in train_sequences if s.positions > 0]
    if not usable:
        raise ValueError("the EAGLE head needs training sequences with reply positions")
    rms = float(torch.cat([s.states for s in usable]).pow(2).mean().sqrt())

    def batch_loss(gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        total, reg_sum, ce_sum, count = 0, 0.0, 0.0, 0
        loss = torch.zeros(())
        while count < settings.batch_positions:
            seq = usable[int(torch.randint(0, len(usable), (1,), generator=gen))]
            reg, ce, _, n = eagle_loss(head, seq, head_weight, eagle.noise * rms)
            loss = loss + (reg + eagle.cls_weight * ce) * n
            reg_sum, ce_sum = reg_sum + float(reg.detach()) * n, ce_sum + float(ce.detach()) * n
            count, total = count + n, total + 1
        return loss / count, {"train_smooth_l1": reg_sum / count, "train_ce": ce_sum / count}

    return train_loop(head, settings, batch_loss, seed, log, log_every)


# --- files -------------------------------------------------------------------------------------------


def save_eagle_head(head: EagleHead, folder: str | Path, meta: Optional[dict] = None) -> Path:
    """Write the head's weights (and its read-out tokens) and its sizes (and `meta`) to `folder`."""
    sh = head.shape
    info = {key: getattr(sh, key) for key in SHAPE_KEYS}
    info.update({"read_out_tokens": int(head.vocab_ids.numel()), **(meta or {})})
    return save_trained_draft(head, folder, (WEIGHTS_FILE, META_FILE), info)


def load_eagle_head(folder: str | Path) -> tuple[EagleHead, dict]:
    """The head saved in `folder` and its metadata; a missing or unreadable file is named in the error."""
    meta_path, weights_path = trained_draft_files(
        folder, (WEIGHTS_FILE, META_FILE), "eagle-head", "mlsys run draft_train draft=eagle_head"
    )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        kinds = {"rope_theta": float, "eps": float}
        sizes = {key: kinds.get(key, int)(meta[key]) for key in SHAPE_KEYS}
        shape = LlamaShape(layers=1, **sizes)
        tensors = load_file(str(weights_path))
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"eagle-head draft: {meta_path} is not an EAGLE head description ({err!r})") from err
    except (SafetensorError, OSError) as err:
        raise ValueError(f"eagle-head draft: {weights_path} does not hold this head's weights ({err})") from err
    try:
        head = EagleHead(shape, tensors.get("vocab_ids"))
        head.load_state_dict(tensors)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"eagle-head draft: {weights_path} does not hold this head's weights ({err})") from err
    return head.eval(), meta
