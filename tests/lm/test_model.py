"""GPT: KV-cache decoding equals the full forward, rollback by slicing, persistence, config errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from components.lm.model import GPT, GPTConfig, lm_loss, truncate_cache


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()


def test_incremental_decoding_matches_full_forward(model):
    x = torch.randint(0, 300, (2, 12))
    full, cache = model(x)
    assert len(cache) == 2 and cache[0][0].shape == (2, 2, 12, 16)
    logits, cache = model(x[:, :5])
    parts = [logits]
    for chunk in (x[:, 5:6], x[:, 6:10], x[:, 10:]):  # one token and several tokens at a time
        logits, cache = model(chunk, kv_cache=cache)
        parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


def test_rollback_is_slicing_the_time_dimension(model):
    x = torch.randint(0, 300, (1, 10))
    full, _ = model(x)
    _, cache = model(torch.cat([x[:, :6], torch.randint(0, 300, (1, 3))], dim=1))  # 3 rejected draft tokens
    logits, cache = model(x[:, 6:], kv_cache=truncate_cache(cache, 6))
    torch.testing.assert_close(logits, full[:, 6:], rtol=1e-5, atol=1e-5)
    assert cache[0][0].shape[2] == 10


def test_save_and_from_folder_roundtrip(model, tmp_path):
    model.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors"}
    loaded = GPT.from_folder(tmp_path)
    x = torch.randint(0, 300, (1, 8))
    assert torch.equal(loaded(x)[0], model(x)[0])
    assert loaded.lm_head.weight is loaded.wte.weight


def test_every_projection_is_a_linear_layer(model):
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2 * 6 + 1  # q, k, v, o, fc, proj per layer + lm_head
    assert not [m for m in model.modules() if isinstance(m, nn.Conv1d)]


def test_generate_greedy_and_context_limit(model):
    out = model.generate(torch.tensor([[1, 2, 3]]), 5, temperature=0)
    assert out.shape == (1, 8) and torch.equal(out[:, :3], torch.tensor([[1, 2, 3]]))
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_a_short_training_run_lowers_the_loss():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=32))
    data = torch.arange(17).repeat(4, 1) % 50  # a pattern to memorise
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = lm_loss(m(data[:, :-1])[0], data[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=100, n_head=3)
    with pytest.raises(ValueError, match="unknown GPTConfig keys"):
        GPTConfig.from_dict({"n_layers": 2})
