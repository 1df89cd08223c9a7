"""Held-out text and perplexity.

No data set is downloaded: the text is the Python documentation that ships inside every CPython
install (`pydoc_data.topics`: ~80 help topics, ~465k characters of English prose and examples).
Topics are split by a seeded permutation into a calibration pool and an evaluation pool, so
calibration never sees the evaluated text.
"""
from __future__ import annotations

import math
import random

import torch
from torch import nn

from components.quant.model import logits_of


def python_docs_split(seed: int = 0, eval_fraction: float = 0.5) -> tuple[str, str]:
    """(calibration text, evaluation text): disjoint sets of pydoc topics, chosen by `seed`."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    random.Random(seed).shuffle(keys)
    n_eval = max(1, int(len(keys) * eval_fraction))
    join = lambda ks: "\n\n".join(topics[k].strip() for k in ks)  # noqa: E731
    return join(keys[n_eval:]), join(keys[:n_eval])


def encode(tokenizer, text: str) -> list[int]:
    """Token ids from a transformers tokenizer or a `tokenizers.Tokenizer`."""
    ids = tokenizer.encode(text)
    return ids.ids if hasattr(ids, "ids") else list(ids)


def windows(ids: list[int], context: int, count: int) -> list[torch.Tensor]:
    """`count` consecutive non-overlapping windows [1, context] from the start of `ids`."""
    n = min(count, len(ids) // context)
    if n == 0:
        raise ValueError(f"text has {len(ids)} tokens, fewer than one window of {context}")
    return [torch.tensor(ids[i * context:(i + 1) * context]).unsqueeze(0) for i in range(n)]


@torch.no_grad()
def perplexity(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, float]:
    """exp(mean next-token NLL) over every predicted position of every window."""
    nll, tokens = 0.0, 0
    for ids in batches:
        logits = logits_of(model, ids).float()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum")
        nll += float(loss)
        tokens += ids.shape[1] - 1
    return {"perplexity": math.exp(nll / tokens), "nll": nll / tokens, "tokens": tokens}
