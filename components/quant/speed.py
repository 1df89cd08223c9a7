"""Timing helpers shared by the flow's benchmark task and benchmarks/quantization.py.

Decode-time matvecs read every weight once per token, and a whole model's fp32 weights do not stay
in cache between tokens. Timing one layer in a hot loop would keep it in cache and flatter fp32
(the L3 caches of the machines this ran on hold 32 to 260 MB), so each measurement cycles through
distinct layers of one shape, the model's own plus copies, until the fp32 working set exceeds
`working_set_mib` (512 MiB, the same size as the bandwidth probe). The quantized copies are the
same layers, so their working set is their real, smaller size, as it is for a whole quantized model.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from components.lm.model import GPT
from components.quant import fused_cpu
from components.quant.linear import QuantLinear
from components.quant.model import set_mode

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
def matvec_latency(
    weights: list[torch.Tensor],
    layers: list[QuantLinear],
    repeats: int = 7,
    methods: tuple[str, ...] = MATVEC_METHODS,
    seed: int = 0,
    flush_mib: int = 512,
) -> dict[str, dict[str, float]]:
    """Median seconds per layer of y = W x (one token) for each method, alternating methods per repeat.

    `weights` are the fp32 matrices and `layers` their quantized versions (same shape); each timed
    pass runs every one of them once. Before each timed pass an unrelated `flush_mib` buffer is read,
    so every method starts with nothing of its own in cache, whichever method ran before it. Also
    reports the bytes each method reads and the GB/s achieved.
    """

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
    flush_buffer = torch.ones(flush_mib * 2**20 // 4)
    for m in methods:  # warm-up, and the fused kernel's first build
        calls[m]()
    for _ in range(repeats):
        for m in methods:
            flush_buffer.sum()
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


def layers_by_shape(fp_model: nn.Module, q_model: nn.Module) -> dict[str, tuple[list[torch.Tensor], list[QuantLinear]]]:
    """ "{out}x{in}" -> (fp32 weights, their QuantLinear layers), for every quantized layer of the model."""
    fp_modules = dict(fp_model.named_modules())
    by_shape: dict[str, tuple[list, list]] = {}
    for name, module in q_model.named_modules():
        if isinstance(module, QuantLinear):
            weights, layers = by_shape.setdefault(f"{module.out_features}x{module.in_features}", ([], []))
            weights.append(fp_modules[name].weight.detach())
            layers.append(module)
    return by_shape


def cache_cold_set(weights: list[torch.Tensor], layers: list[QuantLinear], working_set_mib: int):
    """The layers, cycled into distinct copies until the fp32 weights exceed `working_set_mib`."""
    need = math.ceil(working_set_mib * 2**20 / (weights[0].numel() * 4))
    if need <= len(weights):
        return weights, layers
    extra = range(need - len(weights))
    return (
        weights + [weights[i % len(weights)].clone() for i in extra],
        layers + [copy.deepcopy(layers[i % len(layers)]) for i in extra],
    )


def matvec_by_shape(
    fp_model: nn.Module, q_model: nn.Module, repeats: int, working_set_mib: int = 512
) -> tuple[dict, dict]:
    """`matvec_latency` per quantized layer shape on a cache-cold working set, and those working sets."""
    latency, working_sets = {}, {}
    for shape, (weights, layers) in layers_by_shape(fp_model, q_model).items():
        weights, layers = cache_cold_set(weights, layers, working_set_mib)
        latency[shape] = matvec_latency(weights, layers, repeats=repeats, flush_mib=working_set_mib)
        working_sets[shape] = {
            "layers": len(weights),
            "fp32_mb": sum(w.numel() * 4 for w in weights) / 1e6,
            "quantized_mb": sum(q.bits_per_weight() * q.in_features * q.out_features / 8 for q in layers) / 1e6,
        }
    return latency, working_sets


def last_level_cache_bytes(default: int = 32 * 2**20) -> int:
    """The largest CPU cache's size from sysfs (Linux), or `default` where it cannot be read."""
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text().strip().upper()
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        try:
            sizes.append(int(text.rstrip("KMG")) * scale)
        except ValueError:
            continue
    return max(sizes, default=default)


def memory_bandwidth(mib: int = 512, repeats: int = 5) -> float:
    """Read bandwidth (GB/s) of summing a `mib` MiB float32 tensor: larger than the caches."""
    data = torch.ones(mib * 2**20 // 4)
    sec = median_time(lambda: data.sum(), repeats=repeats)
    return data.numel() * 4 / sec / 1e9


@torch.no_grad()
def decode_tokens_per_s(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> float:
    """Greedy decode with the KV cache (batch 1): generated tokens per second, prefill excluded."""

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


def decode_speed(fp_model: nn.Module, q_model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> dict[str, float]:
    """Decode tokens/s of the fp32 and the quantized model (auto path), alternating, the better of two each."""

    tps: dict[str, float] = {}
    for _ in range(2):  # a shared machine: keep each model's better run
        for label, model in (("fp32", fp_model), ("quantized", q_model)):
            set_mode(model, "auto")
            tps[label] = max(tps.get(label, 0.0), decode_tokens_per_s(model, prompt, new_tokens))
    return tps
