"""The integer low-bit kernel at the memory wall: matvec per kernel, ONNX Runtime's MatMulNBits, native Q4_1 decode.

    python -m benchmarks.quant_kernel --quick     # fewer repeats and tokens
    python -m benchmarks.quant_kernel --full      # what the docs quote (also run by benchmarks.quantization --full)

Matvec: SmolLM2's largest projection shapes (1536x576, 576x1536) and the tied 49152x576 head, batch 1,
cache-cold: each call cycles through distinct copies of a matrix, enough that the fp32 copies exceed
512 MiB and the 2-bit codes alone twice the last-level cache, so no call finds the previous call's
weights cached. A method is timed as a decode loop runs it: untimed calls for WARM_S, then BURST calls
back to back, so its own threads and cores are awake; after ONNX Runtime's calls a pause lets its
threads finish spinning (about 55 ms of a core after each run), which otherwise took the second core
from the next method (the integer kernel's 2-thread head measured 0.9-2.5 ms with ONNX Runtime's runs
between its calls, 0.9 ms without them). The repeats are passes over every shape at 1 and 2 threads, every method
once each, so that each median spans the whole measurement rather than the seconds one shape takes.
Bytes read are the bytes each kernel actually reads (codes, maps, scales, minimums, per-row bases), so
GB/s / measured bandwidth is an honest fraction of the memory wall.
Methods: fp32 (torch), the float fused kernel on the 2.9-bit mixed layer, the integer kernel on the same
layer, on Q4_1 (4 bits + fp16 scale and minimum per 32: the model's own format) and on uniform 2-bit
groups of 32, and ONNX Runtime MatMulNBits with accuracy_level=4 (int8 activations) at 4 and 2 bits,
block 32. ONNX Runtime runs its copies as one node each in one session.run; the integer kernel runs its
copies in one compiled call too (ProductChain: one OpenMP region), so neither pays a thread wake-up per
copy. Same bits: ONNX Runtime's 4-bit against Q4_1, its 2-bit against the uniform 2-bit rows.
Decode: greedy tokens/s of the native Q4_1 SmolLM2 (its GGUF blocks through the kernel) against the fp32
copy on the same lean forward and against transformers' fp32 model, same threads, alternating.
"""

from __future__ import annotations

import copy
import math
import statistics
import time

import torch

from benchmarks.common import bandwidth_bars, parse_mode, target, write_result
from components.quant import QuantLinear, QuantSpec, int_kernel, quantize_weight
from components.quant.packed_matrix import PackedMatrix, product_chain
from components.quant.speed import last_level_cache_bytes, memory_bandwidth

WORKING_SET_MIB = 512
BURST = 3  # timed calls per method per pass, after untimed calls for at least WARM_S
# a core that was idle (a pause, or the last method's single thread) comes back slow for tens of ms:
# the 1-thread 2-bit head took 2.2 ms per product in the 8 calls after a 0.1 s pause, 1.4-1.7 ms after
# 50 ms of untimed calls, 1.2 ms at best
WARM_S = 0.1
# ONNX Runtime's pool threads spin after a run (its default, which its own timing keeps): measured here,
# about 55 ms of a core after each run, which would be taken from whatever method runs next
ORT_SPIN_S = 0.1
SHAPES = ("1536x576", "576x1536", "49152x576")
LARGEST = ("1536x576", "576x1536")
MIXED_SPEC = QuantSpec(name="mixed29", frac_high=0.2, group_size=32)  # 2.9 bits/weight stored (u8 scales/mins)


def ort_matmulnbits(out_f: int, in_f: int, bits: int, copies: int, threads: int, block: int = 32):
    """A session with `copies` MatMulNBits nodes on one input (random codes of the right sizes); run() -> outputs."""
    import numpy as np  # noqa: PLC0415  (reason: optional benchmark dependency, with onnxruntime)
    import onnxruntime as ort  # noqa: PLC0415  (reason: optional benchmark dependency)
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415  (reason: optional benchmark dependency)

    rng = np.random.default_rng(0)
    n_blocks = in_f // block
    blob = block * bits // 8
    nodes, inits, outputs = [], [], []
    for i in range(copies):
        b = numpy_helper.from_array(rng.integers(0, 256, (out_f, n_blocks, blob), dtype=np.uint8), f"B{i}")
        s = numpy_helper.from_array((rng.random(out_f * n_blocks, dtype=np.float32) * 0.01), f"S{i}")
        zp_len = out_f * math.ceil(n_blocks * bits / 8)
        z = numpy_helper.from_array(rng.integers(0, 256, zp_len, dtype=np.uint8), f"Z{i}")
        inits += [b, s, z]
        nodes.append(
            helper.make_node(
                "MatMulNBits",
                ["A", f"B{i}", f"S{i}", f"Z{i}"],
                [f"Y{i}"],
                domain="com.microsoft",
                K=in_f,
                N=out_f,
                bits=bits,
                block_size=block,
                accuracy_level=4,
            )
        )
        outputs.append(helper.make_tensor_value_info(f"Y{i}", TensorProto.FLOAT, [1, out_f]))
    graph = helper.make_graph(
        nodes, "nbits", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [1, in_f])], outputs, inits
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    per_copy = out_f * (n_blocks * blob + 4 * n_blocks + math.ceil(n_blocks * bits / 8))
    return session, per_copy


def _fused_float_bytes(layer: QuantLinear) -> int:
    """What the float kernel reads: the codes plus its decoded per-group arrays (positions, float scale, offset)."""
    meta = layer._meta
    tensors = [layer.codes_lo, layer.codes_hi] + [meta[k] for k in ("rc_lo", "rc_hi", "s_lo", "b_lo", "s_hi", "b_hi")]
    return sum(t.numel() * t.element_size() for t in tensors)


def _one_call(matrices: list[PackedMatrix], act_levels: int, x: torch.Tensor):
    """All copies in one compiled call (ProductChain), as ONNX Runtime runs its copies in one session.run."""
    leveled = []
    for matrix in matrices:
        leveled.append(copy.copy(matrix))  # shares the tensors
        leveled[-1].act_levels = act_levels
    chain = product_chain(leveled)
    return lambda: chain.forward(x)


def _matvec_calls(shape: str, thread_counts: tuple[int, ...], with_ort: bool, batch: int) -> tuple[int, dict]:
    """(copies, {threads: {method: (call, bytes read per copy)}}) for one shape: every method's copies
    of the same weights, all in one call each."""
    out_f, in_f = (int(v) for v in shape.split("x"))
    copies = max(
        2,
        math.ceil(WORKING_SET_MIB * 2**20 / (out_f * in_f * 4)),
        math.ceil(2 * last_level_cache_bytes() / (out_f * in_f / 4)),  # the 2-bit codes: 1/4 byte a weight
    )
    gen = torch.Generator().manual_seed(out_f + in_f)
    base = torch.randn(out_f, in_f, generator=gen) * 0.02
    layer = QuantLinear.from_packed(quantize_weight(base, MIXED_SPEC), mode="fused")
    dense = [base.clone() for _ in range(copies)]
    mixed_layers = [copy.deepcopy(layer) for _ in range(copies)]
    mixed = [PackedMatrix.from_quant_linear(q) for q in mixed_layers]  # the default layout (split)
    streams = []  # the stored layout forced, on the same matrices
    for matrix in mixed:
        streams.append(copy.copy(matrix))  # shares the tensors
        streams[-1].kernel_layout = "streams"
    q4 = [PackedMatrix.quantize_asymmetric(base, 4) for _ in range(copies)]
    q2 = [PackedMatrix.quantize_asymmetric(base, 2) for _ in range(copies)]
    x = torch.randn(batch, in_f, generator=gen)
    calls = {
        "fp32": (lambda: [torch.nn.functional.linear(x, w) for w in dense], out_f * in_f * 4),
        "fused_float_mixed": (lambda: [q.forward_fused(x) for q in mixed_layers], _fused_float_bytes(layer)),
    }
    for name, matrices in (("mixed", mixed), ("q4_1", q4), ("q2", q2)):
        for levels, prefix in ((1, "int8"), (2, "int8x2")):
            calls[f"{prefix}_{name}"] = (_one_call(matrices, levels, x), matrices[0].nbytes())
    calls["int8_mixed_streams"] = (_one_call(streams, 1, x), streams[0].nbytes())
    per_threads = {}
    for threads in thread_counts:
        per_threads[threads] = dict(calls)
        if with_ort:  # a session's thread pool is fixed when it is made
            xa = x.numpy()
            for bits in (4, 2):
                session, per_copy = ort_matmulnbits(out_f, in_f, bits, copies, threads)
                per_threads[threads][f"onnxruntime_{bits}bit"] = (lambda s=session: s.run(None, {"A": xa}), per_copy)
    return copies, per_threads


@torch.no_grad()
def matvec_tables(
    shapes: tuple[str, ...], thread_counts: tuple[int, ...], repeats: int, with_ort: bool, batch: int = 1
) -> dict[str, dict]:
    """Seconds per copy (median of `repeats` x BURST calls, each after a call of the same method) and
    speedup over fp32 of every method, for every shape at every thread count: {"<shape>@<threads>t":
    table}. The repeats run in passes over all the tables, each pass every method of every table once,
    so that a table's median spans the whole measurement instead of the few seconds one table takes:
    on this shared VM the second core's throughput drifts over minutes (the same 2-thread product
    measured 54-90 us in runs minutes apart)."""
    setups = {shape: _matvec_calls(shape, thread_counts, with_ort, batch) for shape in shapes}
    samples: dict[str, dict[str, list[float]]] = {}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for shape, (_, per_threads) in setups.items():
            samples[f"{shape}@{threads}t"] = {m: [] for m in per_threads[threads]}
            for fn, _ in per_threads[threads].values():
                fn()  # warm-up: thread pools, first-call allocations
    for _ in range(repeats):
        for threads in thread_counts:
            torch.set_num_threads(threads)
            for shape, (copies, per_threads) in setups.items():
                for name, (fn, _) in per_threads[threads].items():
                    warm_until = time.perf_counter() + WARM_S
                    fn()  # wakes this method's threads; the last method's threads go idle
                    while time.perf_counter() < warm_until:
                        fn()
                    for _ in range(BURST):
                        start = time.perf_counter()
                        fn()
                        samples[f"{shape}@{threads}t"][name].append((time.perf_counter() - start) / copies)
                    if name.startswith("onnxruntime"):
                        time.sleep(ORT_SPIN_S)
    tables = {}
    for shape, (copies, per_threads) in setups.items():
        out_f, in_f = (int(v) for v in shape.split("x"))
        for threads in thread_counts:
            key = f"{shape}@{threads}t"
            table: dict = {"copies": copies}
            for name, (_, nbytes) in per_threads[threads].items():
                sec = statistics.median(samples[key][name])
                table[name] = {
                    "seconds": sec,
                    "bytes_read": nbytes,
                    "gb_per_s": nbytes / sec / 1e9,
                    "bits_per_weight_read": nbytes * 8 / (out_f * in_f),
                }
            for name in per_threads[threads]:
                table[name]["speedup_vs_fp32"] = table["fp32"]["seconds"] / table[name]["seconds"]
            tables[key] = table
    return tables


def _cells(table: dict) -> str:
    return ", ".join(f"{k} {v['seconds'] * 1e6:.0f}us" for k, v in table.items() if isinstance(v, dict))


@torch.no_grad()
def decode_rates(models: dict, prompt: list[int], new_tokens: int, rounds: int) -> dict[str, float]:
    """Greedy decode tokens/s per model (prefill excluded), alternating models, best of `rounds`."""
    rates: dict[str, float] = {}
    for _ in range(rounds):
        for name, step in models.items():
            logits, cache = step(torch.tensor([prompt]), None)
            start = time.perf_counter()
            for _ in range(new_tokens):
                logits, cache = step(logits[:, -1:].argmax(-1), cache)
            rates[name] = max(rates.get(name, 0.0), new_tokens / (time.perf_counter() - start))
    return rates


def hf_step(model):
    def step(ids, cache):
        out = model(ids, past_key_values=cache, use_cache=True)
        return out.logits, out.past_key_values

    return step


@torch.no_grad()
def teacher_forced_agreement(model, reference, ids: torch.Tensor) -> dict[str, float]:
    got = model.forward(ids)[0][0]
    ref = reference.forward(ids)[0][0]
    return {
        "agreement": float((got.argmax(-1) == ref.argmax(-1)).float().mean()),
        "max_abs_logit_diff": float((got - ref).abs().max()),
        "tokens": int(ids.numel()),
    }


@torch.no_grad()
def overhead(model, threads: int) -> dict[str, float]:
    """One decode step as one compiled call, the same step as torch ops plus a kernel call per matrix,
    and those matrix products alone (each call quantizes its input and starts its own thread team)."""
    _, cache = model.forward(torch.arange(16))
    mats = [model.head] + [m for layer in model.layers for m in (layer.qkv, layer.o, layer.gate_up, layer.down)]
    xs = [torch.randn(1, m.in_features) for m in mats]

    def step_ms() -> float:
        return 1e3 * statistics.median(
            _time(lambda: (model.forward(torch.tensor([5]), cache), model.crop(cache, 16))) for _ in range(15)
        )

    compiled = step_ms()
    model.fused = False
    try:
        torch_path = step_ms()
    finally:
        model.fused = True
    products = statistics.median(_time(lambda: [m.matmul(x) for m, x in zip(mats, xs)]) for _ in range(15))
    return {
        "step_ms": compiled,
        "torch_path_step_ms": torch_path,
        "matrix_products_one_call_each_ms": products * 1e3,
        "matrices_per_token": len(mats),
        "threads": threads,
    }


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(full: bool) -> tuple[dict, list[dict]]:
    from components.lm import smollm2  # noqa: PLC0415  (reason: start-up cost: transformers)
    from components.quant.evaluation import python_docs_split  # noqa: PLC0415  (reason: start-up cost)
    from components.quant.native import LeanLlama, load_native_smollm2  # noqa: PLC0415  (reason: start-up cost)

    repeats = 9 if full else 5
    results: dict = {
        "kernel_paths": int_kernel.paths(),
        "kernel_path_used": int_kernel.best_path(),
        "mixed_spec": MIXED_SPEC.to_dict(),
        "loadavg_start": _loadavg(),
    }
    results["memory_gb_per_s"] = bandwidth = memory_bandwidth(WORKING_SET_MIB)
    results["matvec"] = matvec_tables(SHAPES, (1, 2), repeats, with_ort=True)
    for key, table in results["matvec"].items():
        for row in table.values():
            if isinstance(row, dict):
                row["fraction_of_memory_bandwidth"] = row["gb_per_s"] / bandwidth
        print(f"matvec {key.replace('@', ' ')}: {_cells(table)}", flush=True)
    torch.set_num_threads(2)
    results["matvec_batch"] = {}  # decode blocks of speculative verification: the codes are read once per batch
    for batch in (4, 16):
        table = matvec_tables(("1536x576",), (2,), repeats, with_ort=False, batch=batch)["1536x576@2t"]
        results["matvec_batch"][f"1536x576@2t_batch{batch}"] = table
        print(f"matvec 1536x576 2t batch {batch}: {_cells(table)}", flush=True)
    native = load_native_smollm2()
    native_torch_path = load_native_smollm2()  # the same weights, the forward as torch ops + a kernel call per matrix
    native_torch_path.fused = False
    hf = smollm2.load_model()
    lean_fp32 = LeanLlama.from_hf(hf)
    tokenizer = smollm2.load_tokenizer()
    _, eval_text = python_docs_split(0)
    ids = torch.tensor(tokenizer(eval_text[:40000])["input_ids"][: 512 if full else 256])
    results["q4_native_vs_fp32"] = teacher_forced_agreement(native, lean_fp32, ids)
    prompt = ids[:16].tolist()
    new_tokens = 48 if full else 24
    results["decode_tokens_per_s"] = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        rates = decode_rates(
            {
                "q4_native": native.forward,
                "q4_native_torch_path": native_torch_path.forward,
                "fp32_lean": lean_fp32.forward,
                "fp32_hf": hf_step(hf),
            },
            prompt,
            new_tokens,
            rounds=3,
        )
        results["decode_tokens_per_s"][f"{threads}t"] = rates
        print(f"decode {threads}t: {rates}", flush=True)
    torch.set_num_threads(2)
    results["decode_overhead_2t"] = overhead(native, 2)
    results["weight_bytes_per_token"] = {"q4_native": native.weight_bytes(), "fp32_lean": lean_fp32.weight_bytes()}
    results["loadavg_end"] = _loadavg()
    results["decode_bandwidth_fraction_2t"] = {
        name: rates * results["weight_bytes_per_token"][weights] / 1e9 / bandwidth
        for name, weights in (("q4_native", "q4_native"), ("fp32_lean", "fp32_lean"))
        for rates in [results["decode_tokens_per_s"]["2t"][name]]
    }
    results["decode_note"] = (
        "q4_native: the packaged GGUF's Q4_1 layers and Q8_0 tied head through the integer kernel "
        "(int8 activations + int8 residual), the whole forward one compiled call; q4_native_torch_path: "
        "the same weights with the forward as torch ops and one kernel call per matrix; fp32_lean: the "
        "fp32 copy on that torch forward; fp32_hf: transformers' LlamaForCausalLM with its DynamicCache; "
        "decode_bandwidth_fraction_2t: weight bytes per token x tokens/s over the measured bandwidth"
    )
    return results, targets_of(results)


def targets_of(results: dict) -> list[dict]:
    mv, bw = results["matvec"], results["memory_gb_per_s"]
    two = [mv[f"{s}@2t"] for s in LARGEST]
    targets = [
        target(
            "matvec_speedup_vs_fp32_largest_layers", min(t["int8_mixed"]["speedup_vs_fp32"] for t in two), 4.0, ">="
        ),
        target(
            "matvec_fraction_of_memory_bandwidth",
            max(mv[f"{s}@2t"][m]["gb_per_s"] for s in SHAPES for m in ("int8_mixed", "int8_q4_1")) / bw,
            0.5,
            ">=",
        ),
    ]
    ratios = []
    for s in SHAPES:
        for t in ("1t", "2t"):
            row = mv[f"{s}@{t}"]
            ratios.append(row["onnxruntime_4bit"]["seconds"] / row["int8_q4_1"]["seconds"])
            ratios.append(row["onnxruntime_2bit"]["seconds"] / row["int8_q2"]["seconds"])
    targets.append(target("matvec_speedup_vs_onnxruntime_same_bits", min(ratios), 1.0, ">="))
    rates = results["decode_tokens_per_s"]["2t"]
    targets.append(target("decode_speedup_vs_fp32", rates["q4_native"] / rates["fp32_lean"], 3.0, ">="))
    targets.append(target("decode_speedup_q4_native_vs_fp32", rates["q4_native"] / rates["fp32_lean"], 2.5, ">="))
    targets.append(target("decode_speedup_q4_native_vs_fp32_hf", rates["q4_native"] / rates["fp32_hf"], 2.5, ">="))
    targets.append(target("q4_native_greedy_agreement_vs_fp32", results["q4_native_vs_fp32"]["agreement"], 0.99, ">="))
    return targets


def _loadavg() -> str:
    try:
        return open("/proc/loadavg").read().strip()
    except OSError:
        return "n/a"


def plot(results: dict):
    import matplotlib  # noqa: PLC0415  (reason: start-up cost, only when plotting)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  (reason: after matplotlib.use)

    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5))
    two_threads = {k: row for k, row in results["matvec"].items() if k.endswith("@2t")}
    title = "batch-1 matvec, cache-cold, 2 threads: GB/s of bytes actually read"
    ax = axes[0]
    bandwidth_bars(ax, two_threads, results["memory_gb_per_s"], title)
    ax.legend(fontsize=7)
    ax = axes[1]
    rates = results["decode_tokens_per_s"]
    names = list(rates["2t"])
    for j, t in enumerate(rates):
        ax.bar([i + j * 0.4 for i in range(len(names))], [rates[t][n] for n in names], width=0.4, label=t)
    ax.set_xticks([i + 0.2 for i in range(len(names))], names)
    ax.set(title="SmolLM2-135M greedy decode, tokens/s", ylabel="tokens/s")
    ax.legend()
    fig.tight_layout()
    return fig


def main(argv=None) -> None:
    args = parse_mode(__doc__.splitlines()[0], argv)
    results, targets = run(bool(args.full))
    write_result("quant_kernel", results, targets, figure=plot(results), args=args)


if __name__ == "__main__":
    main()
