"""The CUDA paths (pinned checkpoint staging on a copy stream, speculative decoding on two streams).

Each test runs on the CPU everywhere (so the test itself is known to work) and on CUDA where a GPU
is present. They need only torch, transformers, numpy and safetensors, so they also run on a bare
GPU image without the project's orchestration stack: `bash scripts/device_checks.sh`.
"""

from __future__ import annotations

import pytest
import torch

from components.checkpoint import LazyAsyncCheckpointer, latest_checkpoint, load_checkpoint
from components.decoding.engine import build_decoder
from components.decoding.models import layer_skip_draft, tiny_llama
from components.lm.training import restore_state, train_loop
from tests.checkpoint import _tiny

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
def test_lazy_checkpoint_restores_exactly_and_training_continues(device, tmp_path):
    def trained(start, stop, parts, ckpt=None):
        model, optimizer, scheduler, gen = parts
        train_loop(
            model,
            optimizer,
            scheduler,
            _tiny.InMemoryCorpus(),
            _tiny.settings(8),
            data_generator=gen,
            start_step=start,
            stop_step=stop,
            checkpointer=ckpt,
            checkpoint_every=1 if ckpt else 0,
            device=device,
        )
        return model, optimizer

    def fresh():
        model, optimizer, scheduler, gen = _tiny.fresh()
        model.to(device)  # parameters move in place: the optimizer keeps the same objects
        return model, optimizer, scheduler, gen

    reference = _tiny.flat_state(*trained(0, 8, fresh()))
    parts = fresh()
    with LazyAsyncCheckpointer(tmp_path, keep_last=2, device=device) as ckpt:
        ckpt.attach(parts[1])
        saved = _tiny.flat_state(*trained(0, 5, parts, ckpt))
        ckpt.wait()
        if device == "cuda":  # staged through page-locked host memory, as the paper does
            assert ckpt.pool.buffer.is_pinned()
    resumed = fresh()
    step = restore_state(load_checkpoint(latest_checkpoint(tmp_path)), resumed[0], resumed[1], resumed[2], resumed[3])
    assert step == 5
    _tiny.assert_bitwise_equal(_tiny.flat_state(resumed[0], resumed[1]), saved)
    continued = _tiny.flat_state(*trained(5, 8, resumed))
    for key in reference:  # GPU backward kernels may reorder sums: equal up to float rounding there
        torch.testing.assert_close(
            continued[key],
            reference[key],
            rtol=0 if device == "cpu" else 1e-5,
            atol=0 if device == "cpu" else 1e-6,
            msg=key,
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["sd", "pearl"])
def test_greedy_speculative_decoding_matches_autoregressive(device, method):
    target = tiny_llama(vocab_size=64, hidden=32, layers=3, dtype=torch.float32).to(device)
    draft = layer_skip_draft(target, 1)
    prompts = [[1, 5, 9, 3], [2, 7, 7, 7, 11], [4]]
    ar = build_decoder("ar", target)
    spec = build_decoder(method, target, draft, gamma=3, parallel=True)
    try:
        for prompt in prompts:
            expected, _ = ar.generate(prompt, 24)
            got, stats = spec.generate(prompt, 24)
            assert got == expected
            assert stats.target_forwards <= 24
    finally:
        ar.close()
        spec.close()
