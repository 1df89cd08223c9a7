"""Prompt-lookup drafting: the draft copies what followed the latest earlier occurrence of the context's end.

The peer is transformers' `generate(prompt_lookup_num_tokens=...)` (Saxena's prompt lookup decoding):
no model, the n-gram that ends the context (n = `max_ngram`, then shorter) is looked up in the
context itself (prompt and generated text), and the token that followed its most recent earlier
occurrence is proposed. It costs a dictionary lookup per token and wins where the reply repeats the
prompt (code edits, quoting, identifiers).

As a `CausalLM` its "logits" are a one-hot row per position (0 at the proposed token, -inf elsewhere),
so the engine's draft q is a point mass and the usual verdict (accept with probability min(1, p/q))
keeps the output lossless, greedy or sampled. Where no n-gram of the context has occurred before,
it proposes the context's last token (usually rejected; the verdict stays exact). Its "cache" is the
token history with the follower table; rolling back rebuilds the table from the kept tokens.
"""

from __future__ import annotations

from typing import Optional

import torch

from components.decoding.cache import CausalLM


class LookupCache:
    """The tokens seen so far and, per n-gram (n <= max_ngram), the token after its latest occurrence."""

    def __init__(self, max_ngram: int):
        self.max_ngram = max_ngram
        self.tokens: list[int] = []
        self.follower: dict[tuple[int, ...], int] = {}

    def append(self, token: int) -> None:
        tokens = self.tokens
        for n in range(1, min(self.max_ngram, len(tokens)) + 1):  # the n-grams ending before `token` now have it next
            self.follower[tuple(tokens[-n:])] = token
        tokens.append(token)

    def proposal(self) -> int:
        """The token after the latest earlier occurrence of the longest n-gram ending the history."""
        tokens = self.tokens
        for n in range(min(self.max_ngram, len(tokens)), 0, -1):
            nxt = self.follower.get(tuple(tokens[-n:]))
            if nxt is not None:
                return nxt
        return tokens[-1]

    def truncate(self, length: int) -> None:
        kept = self.tokens[:length]
        self.tokens, self.follower = [], {}
        for token in kept:
            self.append(token)


class PromptLookupDraft(CausalLM):
    """A draft without weights: n-gram copy from the context (see the module doc)."""

    def __init__(self, vocab_size: int, max_ngram: int = 3, max_context: int = 1 << 30):
        if vocab_size < 1 or max_ngram < 1:
            raise ValueError(f"prompt lookup needs vocab_size >= 1 and max_ngram >= 1, got {vocab_size}, {max_ngram}")
        self.name, self.vocab_size, self.max_ngram, self.max_context = (
            "prompt_lookup",
            vocab_size,
            max_ngram,
            max_context,
        )
        self.device = torch.device("cpu")
        self.uses_cores = False  # a table lookup per token

    def forward(self, ids: torch.Tensor, cache: Optional[LookupCache]) -> tuple[torch.Tensor, LookupCache]:
        cache = cache if cache is not None else LookupCache(self.max_ngram)
        proposals = []
        for token in ids.reshape(-1).tolist():
            if not 0 <= token < self.vocab_size:
                raise ValueError(f"token {token} is outside the vocabulary of {self.vocab_size}")
            cache.append(token)
            proposals.append(cache.proposal())
        logits = torch.full((1, len(proposals), self.vocab_size), float("-inf"))
        logits[0, torch.arange(len(proposals)), torch.tensor(proposals)] = 0.0
        return logits, cache

    def crop(self, cache: Optional[LookupCache], length: int) -> Optional[LookupCache]:
        if cache is not None and length < len(cache.tokens):
            cache.truncate(length)
        return cache

    @staticmethod
    def cache_length(cache: Optional[LookupCache]) -> int:
        return 0 if cache is None else len(cache.tokens)
