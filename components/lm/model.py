"""A self-contained nanoGPT-style causal language model with an explicit KV cache.

The draft model for speculative decoding (the `serve` flow) and the model the `quantize` flow
compresses. Its vocabulary is SmolLM2's (49152 tokens), so a draft trained here proposes tokens
the SmolLM2 target can verify directly. Every projection is an `nn.Linear` so a quantizer can swap
them one by one.

Incremental decoding:
    logits, cache = model(input_ids)                  # prefill: cache is a list, one (k, v) per layer
    logits, cache = model(next_ids, kv_cache=cache)   # k, v: [B, n_head, T_past, head_dim]
    cache = truncate_cache(cache, n)                  # roll back rejected draft tokens
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from components.checks import one_of

KVCache = list[tuple[torch.Tensor, torch.Tensor]]

# the models a GPTConfig can build (`_target_`): each takes (config, device) and returns a torch module
MODEL_BUILDERS = ("components.lm.model.build_gpt", "components.lm.smollm2.build_for_training")

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class GPTConfig:
    vocab_size: int = 49152  # SmolLM2's tokenizer: the draft shares the target's vocabulary
    block_size: int = 256  # longest context (positions are learned, so this is a hard limit)
    n_layer: int = 4  # depth: a draft must be many times cheaper than the 30-layer target
    n_head: int = 4  # head_dim = n_embd / n_head = 64, as in SmolLM2
    n_embd: int = 256  # width; the tied 49152 x 256 embedding is most of the parameters
    dropout: float = 0.0  # small models on a few million tokens: regularise by early stopping instead
    bias: bool = False  # no biases in Linear/LayerNorm: slightly better and faster (nanoGPT)
    tie_embeddings: bool = True  # lm_head shares the token embedding: halves the parameters
    dtype: str = "float32"  # parameters' dtype when trained (float32 | bfloat16 | float16)
    # which model lm_train builds from these fields: build_gpt (this GPT, from scratch) or
    # components.lm.smollm2.build_for_training (SmolLM2-135M fine-tuning; the fields must match it)
    _target_: str = "components.lm.model.build_gpt"

    def __post_init__(self) -> None:
        one_of("model._target_", self._target_, MODEL_BUILDERS)
        one_of("model.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise ValueError(f"GPTConfig.{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_dict(cls, data: dict) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig keys {unknown}; known: {sorted(known)}")
        return cls(**data)


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (torch's has no bias=False before 2.1 in all paths)."""

    def __init__(self, dim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        # Separate q/k/v projections (not one fused c_attn) so each is an independent nn.Linear.
        self.q_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.k_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.v_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_head, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, past: Optional[tuple[torch.Tensor, torch.Tensor]] = None):
        B, T, C = x.shape
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        t_past = k.shape[2] - T
        dropout = self.dropout if self.training else 0.0
        if t_past == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            # Query i sits at absolute position t_past + i and may see keys 0..t_past + i.
            mask = torch.ones(T, t_past + T, dtype=torch.bool, device=x.device).tril(diagonal=t_past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y)), (k, v)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, past=None):
        attn_out, present = self.attn(self.ln_1(x), past)
        x = x + attn_out
        x = x + self.mlp(self.ln_2(x))
        return x, present


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = LayerNorm(config.n_embd, config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections keeps the residual stream's variance flat.
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self, input_ids: torch.Tensor, kv_cache: Optional[KVCache] = None, use_cache: bool = True
    ) -> tuple[torch.Tensor, Optional[KVCache]]:
        """Logits [B, T, vocab] for `input_ids` [B, T] that follow the `kv_cache` prefix."""
        B, T = input_ids.shape
        t_past = 0 if not kv_cache else kv_cache[0][0].shape[2]
        if t_past + T > self.config.block_size:
            raise ValueError(f"sequence of {t_past + T} tokens exceeds block_size={self.config.block_size}")
        if kv_cache is not None and len(kv_cache) not in (0, self.config.n_layer):
            raise ValueError(f"kv_cache has {len(kv_cache)} layers, model has {self.config.n_layer}")
        pos = torch.arange(t_past, t_past + T, device=input_ids.device)
        x = self.drop(self.wte(input_ids) + self.wpe(pos))
        new_cache: KVCache = []
        for i, block in enumerate(self.blocks):
            x, present = block(x, kv_cache[i] if kv_cache else None)
            new_cache.append(present)
        logits = self.lm_head(self.ln_f(x))
        return logits, (new_cache if use_cache else None)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        eos_token_id: Optional[int] = None,
    ) -> torch.Tensor:
        """Sample continuation tokens with the KV cache (greedy when temperature == 0)."""
        budget = self.config.block_size - input_ids.shape[1]
        max_new_tokens = max(0, min(max_new_tokens, budget))
        logits, cache = self(input_ids)
        out = input_ids
        for _ in range(max_new_tokens):
            next_logits = logits[:, -1, :]
            if temperature == 0:
                next_id = next_logits.argmax(dim=-1, keepdim=True)
            else:
                next_logits = next_logits / temperature
                if top_k is not None:
                    kth = torch.topk(next_logits, min(top_k, next_logits.shape[-1])).values[:, [-1]]
                    next_logits = next_logits.masked_fill(next_logits < kth, float("-inf"))
                probs = F.softmax(next_logits, dim=-1)
                next_id = torch.multinomial(probs, 1, generator=generator)
            out = torch.cat([out, next_id], dim=1)
            if eos_token_id is not None and bool((next_id == eos_token_id).all()):
                break
            logits, cache = self(next_id, kv_cache=cache)
        return out

    # --- persistence: config.json + model.safetensors ---------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        if self.config.tie_embeddings:
            state.pop("lm_head.weight", None)  # shared with wte.weight; re-tied on load
        tmp = folder / (WEIGHTS_FILE + ".tmp")
        save_file(state, str(tmp), metadata={"format": "pt"})
        tmp.chmod(0o644)  # readable by the serving and quantizing users too
        tmp.replace(folder / WEIGHTS_FILE)
        (folder / CONFIG_FILE).write_text(json.dumps({"model_type": "gpt", **asdict(self.config)}, indent=2))
        return folder

    @classmethod
    def from_folder(cls, folder: str | Path, device: str | torch.device = "cpu") -> GPT:
        folder = Path(folder)
        if not (folder / CONFIG_FILE).exists() or not (folder / WEIGHTS_FILE).exists():
            raise FileNotFoundError(f"{folder} needs {CONFIG_FILE} and {WEIGHTS_FILE} (written by GPT.save)")
        data = json.loads((folder / CONFIG_FILE).read_text())
        data.pop("model_type", None)
        model = cls(GPTConfig.from_dict(data))
        state = load_file(str(folder / WEIGHTS_FILE))
        if model.config.tie_embeddings:
            state["lm_head.weight"] = state["wte.weight"]
        model.load_state_dict(state, strict=True)
        return model.to(device).eval()


def build_gpt(config: GPTConfig, device: str = "cpu") -> GPT:
    """This GPT from scratch (the `_target_` GPTConfig names by default)."""
    return GPT(config).to(device=device, dtype=getattr(torch, config.dtype))


def truncate_cache(cache: KVCache, length: int) -> KVCache:
    """Keep the first `length` positions of every layer's (k, v): rolls back rejected tokens."""
    return [(k[:, :, :length], v[:, :, :length]) for k, v in cache]


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; `targets` are the inputs shifted by one."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))
