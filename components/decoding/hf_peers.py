"""transformers' own speculative decoding as peer rows: `generate(assistant_model=...)` with the same
draft, and `generate(prompt_lookup_num_tokens=...)` (n-gram prompt lookup), greedy, on a transformers target."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from components.decoding.engine import DecodeStats
from components.decoding.models import gpt_as_hf
from components.lm.model import GPT


def hf_generate(
    target, prompt: Sequence[int], max_new: int, eos: Sequence[int], method: str = "hf_generate", **speculation
) -> tuple[list[int], DecodeStats]:
    """transformers `generate` greedy with `speculation` (assistant_model=..., prompt_lookup_num_tokens=...)."""
    ids = torch.tensor([list(prompt)], device=next(target.parameters()).device)
    start = time.perf_counter()
    with torch.no_grad():
        out = target.generate(
            ids,
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=list(eos) or None,
            pad_token_id=(list(eos) or [0])[0],
            **speculation,
        )
    tokens = out[0, len(prompt) :].tolist()
    stats = DecodeStats(method=method, prompt_tokens=len(prompt), new_tokens=len(tokens))
    stats.seconds = time.perf_counter() - start
    return tokens, stats


def hf_assisted_generate(target, draft, prompt: Sequence[int], max_new: int, eos: Sequence[int]) -> DecodeStats:
    """transformers `generate(assistant_model=...)` (greedy; its adaptive +2/−1 draft length)."""
    return hf_generate(target, prompt, max_new, eos, "hf_assisted", assistant_model=draft)[1]


def transformers_draft(draft):
    """The draft as a transformers model for `generate(assistant_model=...)`: itself, the project's
    GPT converted (same weights), or None (no draft, or one transformers cannot run)."""
    if draft is not None and hasattr(draft, "generation_config"):
        return draft
    if isinstance(draft, GPT):
        return gpt_as_hf(draft)
    return None
