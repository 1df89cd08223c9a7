"""Tiny random models for the decoding tests (fast; their text is noise, only exactness matters)."""

from __future__ import annotations

import pytest
import torch

from components.decoding.models import load_target, tiny_llama
from components.lm.model import GPT, GPTConfig
from tests.quant.test_native import _write_gguf


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


@pytest.fixture(scope="module")
def native_tiny(tmp_path_factory):
    """A 3-layer random Llama written as a Q4_1 GGUF and loaded as the native target (compiled when
    it can): what the trained drafts (exit adapter, EAGLE head) read their states from."""
    path = tmp_path_factory.mktemp("native") / "tiny.gguf"
    _write_gguf(path, tiny_llama(vocab_size=64, hidden=64, layers=3, heads=4, dtype=torch.float32), q4_1=True)
    return load_target("smollm2_q4_native", str(path))
