"""Held-out text and perplexity.

No data set is downloaded: the text is the Python documentation that ships inside every CPython
install (`pydoc_data.topics`: ~80 help topics, ~465k characters of English prose and examples).
Topics are split by a seeded permutation into a calibration pool and an evaluation pool, so
calibration never sees the evaluated text.
"""

from __future__ import annotations

import math
import random
from pydoc_data.topics import topics

import torch
from torch import nn

from components.quant.model import logits_of


def python_docs_split(seed: int = 0, eval_fraction: float = 0.5) -> tuple[str, str]:
    """(calibration text, evaluation text): disjoint sets of pydoc topics, chosen by `seed`."""

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
    return [torch.tensor(ids[i * context : (i + 1) * context]).unsqueeze(0) for i in range(n)]


@torch.no_grad()
def perplexity(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, float]:
    """exp(mean next-token NLL) over every predicted position of every window."""
    window_nll, window_tokens = [], []
    for ids in batches:
        logits = logits_of(model, ids).float()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum")
        window_nll.append(float(loss))
        window_tokens.append(ids.shape[1] - 1)
    nll, tokens = sum(window_nll), sum(window_tokens)
    return {
        "perplexity": math.exp(nll / tokens),
        "nll": nll / tokens,
        "tokens": tokens,
        "window_nll": window_nll,
        "window_tokens": window_tokens,
    }


def bootstrap_ratio_ci(
    nll_a: list[float], nll_b: list[float], tokens: list[int], resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """CI of perplexity(a) / perplexity(b) by resampling windows, the same windows for both (paired).

    `nll_a`, `nll_b`: summed NLL per window of two models on the same windows; `tokens` per window.
    With b = a it gives the CI of a single perplexity relative to its point value.
    """
    if not len(nll_a) == len(nll_b) == len(tokens) or not tokens:
        raise ValueError(
            f"paired bootstrap needs equal, non-empty window lists, got {len(nll_a)}, {len(nll_b)}, {len(tokens)}"
        )
    a, b, n = (
        torch.tensor(nll_a, dtype=torch.float64),
        torch.tensor(nll_b, dtype=torch.float64),
        torch.tensor(tokens, dtype=torch.float64),
    )
    idx = torch.randint(len(tokens), (resamples, len(tokens)), generator=torch.Generator().manual_seed(seed))
    log_ratio = (a[idx].sum(1) - b[idx].sum(1)) / n[idx].sum(1)
    lo, hi = torch.quantile(log_ratio, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return math.exp(float(lo)), math.exp(float(hi))


def bootstrap_ppl_ci(
    nll: list[float], tokens: list[int], resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """CI of one perplexity by resampling windows."""
    zeros = [0.0] * len(nll)
    return bootstrap_ratio_ci(nll, zeros, tokens, resamples, seed, level)
