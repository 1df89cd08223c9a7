"""Tiny random models for the decoding tests (fast; their text is noise, only exactness matters)."""

from __future__ import annotations

import pytest
import torch

from components.lm.model import GPT, GPTConfig


@pytest.fixture(autouse=True, scope="module")
def _tiny_models(one_torch_thread):
    """Every test here decodes with tiny models (see tests/conftest.py)."""


def tiny_gpt(
    vocab_size: int = 16, n_layer: int = 2, n_embd: int = 16, seed: int = 0, scale: float = 1.0, block_size: int = 128
):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=2, n_embd=n_embd))
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(scale)  # std 0.02 * scale: peaked enough that outputs depend on the context
    return model.double().eval()
