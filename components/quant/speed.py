"""Timing helpers shared by the flow's benchmark task and benchmarks/quantization.py.

Decode-time matvecs read every weight once per token, and a whole model's weights do not stay in
cache between tokens. Timing one small layer in a hot loop would keep it in cache and flatter
fp32, so each measurement cycles through `copies` distinct layers of the same shape (like the
model's stack of identical blocks) and reports time per layer.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
from torch import nn

from components.quant.linear import QuantLinear
from components.quant.quantizer import quantize_weight
from components.quant.spec import QuantSpec

MATVEC_METHODS = ("fp32", "naive", "pipelined", "fused")


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


@torch.no_grad()
def matvec_latency(weights: list[torch.Tensor], layers: list[QuantLinear], repeats: int = 7,
                   methods: tuple[str, ...] = MATVEC_METHODS, seed: int = 0) -> dict[str, dict[str, float]]:
    """Median seconds per layer of y = W x (one token) for each method, alternating methods per repeat.

    `weights` are the fp32 matrices and `layers` their quantized versions (same shape); each timed
    pass runs every one of them once. Also reports the bytes each method reads and the GB/s achieved.
    """
    from components.quant import fused_cpu

    out_f, in_f = weights[0].shape
    x = torch.randn(1, in_f, generator=torch.Generator().manual_seed(seed))
    methods = tuple(m for m in methods if m != "fused" or fused_cpu.available())
    calls = {
        "fp32": lambda: [torch.nn.functional.linear(x, w) for w in weights],
        "naive": lambda: [layer.forward_naive(x) for layer in layers],
        "pipelined": lambda: [layer.forward_pipelined(x) for layer in layers],
        "fused": lambda: [layer.forward_fused(x) for layer in layers],
    }
    samples: dict[str, list[float]] = {m: [] for m in methods}
    for m in methods:  # warm-up, and the fused kernel's first build
        calls[m]()
    for _ in range(repeats):
        for m in methods:
            start = time.perf_counter()
            calls[m]()
            samples[m].append((time.perf_counter() - start) / len(weights))
    bits = sum(layer.bits_per_weight() for layer in layers) / len(layers)  # per-layer allocations differ
    result = {}
    for m in methods:
        sec = statistics.median(samples[m])
        read = in_f * out_f * (4 if m == "fp32" else bits / 8)
        result[m] = {"seconds": sec, "bytes_read": read, "gb_per_s": read / sec / 1e9}
    return result


def gaussian_layers(shape: tuple[int, int], spec: QuantSpec, copies: int, seed: int = 0):
    """`copies` random fp32 weights of `shape` and their quantized layers (for shapes without a model)."""
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(*shape, generator=gen) * 0.02 for _ in range(copies)]
    return weights, [QuantLinear.from_packed(quantize_weight(w, spec)) for w in weights]


def memory_bandwidth(mib: int = 512, repeats: int = 5) -> float:
    """Read bandwidth (GB/s) of summing a `mib` MiB float32 tensor: larger than the caches."""
    data = torch.ones(mib * 2 ** 20 // 4)
    sec = median_time(lambda: data.sum(), repeats=repeats)
    return data.numel() * 4 / sec / 1e9


@torch.no_grad()
def decode_tokens_per_s(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> float:
    """Greedy decode with the KV cache (batch 1): generated tokens per second, prefill excluded."""
    from components.lm.model import GPT

    is_gpt = isinstance(model, GPT)

    def step_all() -> float:
        if is_gpt:
            logits, cache = model(prompt)
            start = time.perf_counter()
            for _ in range(new_tokens):
                nxt = logits[:, -1:].argmax(-1)
                logits, cache = model(nxt, kv_cache=cache)
            return time.perf_counter() - start
        out = model(prompt, use_cache=True)
        past = out.past_key_values
        start = time.perf_counter()
        for _ in range(new_tokens):
            nxt = out.logits[:, -1:].argmax(-1)
            out = model(nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
        return time.perf_counter() - start

    step_all()  # warm-up (allocations, kernel build)
    return new_tokens / step_all()
