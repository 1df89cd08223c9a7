"""One KV-cache abstraction with rollback, over both model families the project decodes with.

- Hugging Face causal LMs (SmolLM2 as LlamaForCausalLM, tiny random Llamas in tests): the cache is
  a `DynamicCache`; rollback is `DynamicCache.crop(n)`.
- The project's nanoGPT-style `GPT` (components/lm/model.py): the cache is a per-layer list of
  (k, v) tensors [B, n_head, T, head_dim]; rollback slices T.

A `SequenceRunner` is one model decoding one sequence: it remembers how many tokens of the sequence
its cache already holds (`cached`), feeds only the rest, and rolls back when a speculative
continuation is rejected. Both the draft and the target of every decoding method go through it.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from typing import Any, Optional

import torch


class CausalLM:
    """Adapter: `forward(ids [1, T], cache) -> (logits [1, T, V], cache)`, `crop(cache, n)`."""

    name: str = "model"
    max_context: int = 1 << 30
    vocab_size: int = 0
    device: torch.device = torch.device("cpu")
    # False for a draft that computes nothing worth a core (prompt lookup): PEARL then leaves every
    # core to the target instead of parking one on a draft thread that would sit idle
    uses_cores: bool = True
    # True for a draft that reads the target's hidden states (EAGLE): the decoders run the target through
    # `forward_states` and hand each pass's states to the draft's `take_target_states` between rounds
    reads_target_states: bool = False

    def forward(self, ids: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def forward_states(self, ids: torch.Tensor, cache: Any) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """A target that can hand its states: `forward`'s logits, the states its head reads [T, hidden], the cache."""
        raise NotImplementedError(f"{self.name} does not hand its hidden states to a draft")

    def take_target_states(self, cache: Any, tokens: Sequence[int], start: int, states: torch.Tensor) -> Any:
        """A draft that reads them: the target's states [n, hidden] at positions start.. of `tokens` (the
        sequence the target was fed); returns the draft's cache for this sequence, holding them."""
        raise NotImplementedError

    def crop(self, cache: Any, length: int) -> Any:
        raise NotImplementedError

    @staticmethod
    def cache_length(cache: Any) -> int:
        raise NotImplementedError


class HFCausalLM(CausalLM):
    """A transformers `*ForCausalLM` whose cache is a `DynamicCache` (cropped in place)."""

    def __init__(self, model, name: str = "hf"):
        self.model = model.eval()
        self.name = name
        config = model.config
        self.vocab_size = int(config.vocab_size)
        self.max_context = int(getattr(config, "max_position_embeddings", 1 << 30) or (1 << 30))
        self.device = next(model.parameters()).device
        # transformers renamed `past_key_values` to `cache` (5.x); accept both generations.
        self._cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        out = self.model(input_ids=ids, use_cache=True, **{self._cache_kwarg: cache})
        new_cache = out.get("cache", None)
        return out.logits, new_cache if new_cache is not None else out.past_key_values

    def crop(self, cache: Any, length: int) -> Any:
        if cache is not None:
            remove = self.cache_length(cache) - length
            if remove > 0:
                cache.crop(-remove)  # a negative count removes that many positions in every version
        return cache

    @staticmethod
    def cache_length(cache: Any) -> int:
        return 0 if cache is None else int(cache.get_seq_length())


class GPTCausalLM(CausalLM):
    """The project's `GPT`: learned positions, so `block_size` is a hard context limit."""

    def __init__(self, model, name: str = "gpt"):
        self.model = model.eval()
        self.name = name
        self.vocab_size = int(model.config.vocab_size)
        self.max_context = int(model.config.block_size)
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        return self.model(ids, kv_cache=cache)

    def crop(self, cache: Any, length: int) -> Any:
        if not cache:
            return cache
        return [(k[:, :, :length], v[:, :, :length]) for k, v in cache]

    @staticmethod
    def cache_length(cache: Any) -> int:
        return 0 if not cache else int(cache[0][0].shape[2])


def wrap_model(model, name: Optional[str] = None) -> CausalLM:
    """Pick the adapter for a model object (already-wrapped adapters pass through)."""
    if isinstance(model, CausalLM):
        return model
    if hasattr(model, "config") and hasattr(model.config, "block_size") and hasattr(model, "blocks"):
        return GPTCausalLM(model, name or "gpt")
    return HFCausalLM(model, name or getattr(model.config, "model_type", "hf"))


class SequenceRunner:
    """One model decoding one sequence, with a rollback-able KV cache and forward accounting."""

    def __init__(self, model: CausalLM, keep_states: bool = False):
        self.model = model
        self.cache: Any = None
        self.cached = 0  # tokens of the sequence whose keys/values the cache holds
        self.forwards = 0  # forward passes (one per call, whatever the number of tokens)
        self.forward_seconds = 0.0
        # keep_states: each forward also keeps the states the head read, (first position, tokens fed, [n, hidden])
        self.keep_states = keep_states
        self.states: Optional[tuple[int, list[int], torch.Tensor]] = None

    def logits_for(self, tokens: Sequence[int]) -> torch.Tensor:
        """Feed `tokens[cached:]` (at least one) and return their logits [n_fed, V]."""
        if self.cached >= len(tokens):
            raise ValueError(f"nothing to feed: cache holds {self.cached} of {len(tokens)} tokens")
        if len(tokens) > self.model.max_context:
            raise ValueError(f"{self.model.name}: {len(tokens)} tokens exceed its context of {self.model.max_context}")
        new = torch.tensor([list(tokens[self.cached :])], dtype=torch.long, device=self.model.device)
        start, first = time.perf_counter(), self.cached
        if self.keep_states:
            logits, states, self.cache = self.model.forward_states(new, self.cache)
            if self.states is not None and self.states[0] <= first:  # not handed over yet: keep what still holds
                states = torch.cat([self.states[2][: first - self.states[0]], states])
                first = self.states[0]
            self.states = (first, list(tokens), states)
        else:
            logits, self.cache = self.model.forward(new, self.cache)
        self.forward_seconds += time.perf_counter() - start
        self.forwards += 1
        self.cached = len(tokens)
        # Sampling and verdicts run on the CPU with CPU generators (also when the model is on a GPU):
        # the rows are small ([n_fed, V]) and the verdict needs them on the host anyway.
        return logits[0].float().cpu() if logits.device.type != "cpu" else logits[0]

    def hand_states(self, draft: SequenceRunner) -> None:
        """Give the states of this runner's forwards since the last hand-over to `draft`'s model (an EAGLE
        draft). Called between rounds, never while the draft runs: its proposals never depend on timing."""
        if self.states is not None:
            first, tokens, states = self.states
            draft.cache = draft.model.take_target_states(draft.cache, tokens, first, states)
            self.states = None

    def rollback(self, length: int) -> None:
        """Forget every cached position from `length` on (rejected speculative tokens)."""
        if length < self.cached:
            self.cache = self.model.crop(self.cache, length)
            self.cached = length

    def check_consistent(self) -> None:
        """The cache's own length must equal what the runner believes it holds."""
        actual = self.model.cache_length(self.cache)
        if actual != self.cached:
            raise AssertionError(f"{self.model.name}: cache holds {actual} positions, runner expects {self.cached}")
