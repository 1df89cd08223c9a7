"""One fine-tuning step of SmolLM2 as `tune` takes it, side by side: LM head over every position or
only at the reply positions, float32 or bfloat16 matmuls; and the machine's matmul bound.

The step is what `tune_selfpico` runs (`components/compiler/tuning.py`): the top 8 of 30 decoder
layers trained (+ final norm), AdamW, one batch of 8 sequences of 256 tokens whose last 16 are the
reply (6%, about the replies' share of the value-prediction chats). Methods:

- `fp32_full_head`: `model(..., labels=...).loss` in float32: the 49k-word head at every position
  (the loop before `reply_loss`);
- `fp32_reply_head`: `reply_loss` in float32: the head only where a label is;
- `bf16_full_head`, `bf16_reply_head`: the same under `torch.autocast(bfloat16)` (weights and AdamW
  float32). `bf16_reply_head` is what `train.precision=auto` runs on a CPU with fast bf16 kernels.

Methods alternate within every repeat after a warm-up step each; medians over repeats; ratios over
`fp32_full_head`. The bound: each method's matmul FLOPs (forward of every layer, backward of the
trained ones, the head where it runs, attention scores) over this machine's measured matmul rate in
that dtype, timed in the same run on a SmolLM2-shaped product (2048 tokens x 576 -> 1536).
"""

from __future__ import annotations

import statistics
import time

import torch
from matplotlib.figure import Figure

from benchmarks.common import parse_mode, write_result
from components.compiler.tuning import matmul_autocast, reply_loss, train_top_layers
from components.lm import smollm2

BATCH, LENGTH, REPLY = 8, 256, 16  # 2048 tokens: tune_selfpico's batch_tokens
TRAIN_LAYERS = 8  # tune_selfpico's train_layers
METHODS = {  # name -> (autocast dtype or None, head only at reply positions)
    "fp32_full_head": (None, False),
    "fp32_reply_head": (None, True),
    "bf16_full_head": (torch.bfloat16, False),
    "bf16_reply_head": (torch.bfloat16, True),
}


def _matmul_rate(dtype: torch.dtype, repeats: int) -> float:
    """FLOP/s of a SmolLM2-shaped matmul (2048 tokens x 576 -> 1536, as its MLP's) in `dtype`."""
    a = torch.randn(BATCH * LENGTH, 576).to(dtype)
    b = torch.randn(576, 1536).to(dtype)
    torch.mm(a, b)  # warm-up: oneDNN picks and caches its kernel
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(10):
            torch.mm(a, b)
        times.append((time.perf_counter() - start) / 10)
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / min(times)


def _step_flops(model, reply_head: bool) -> float:
    """Matmul FLOPs of one step: every layer forward, the trained layers backward (input and weight
    gradients: twice the forward), attention scores likewise, the head forward and backward (to the
    hidden states only: the tied embedding is frozen) where it runs."""
    cfg = model.config
    layer_params = sum(p.numel() for n, p in model.model.layers[0].named_parameters() if p.dim() == 2)
    tokens = BATCH * LENGTH
    attention = 4 * LENGTH * cfg.hidden_size  # scores and weighted sum, per token and layer (causal: half)
    per_layer = 2 * layer_params * tokens + attention * tokens / 2
    layers = cfg.num_hidden_layers * per_layer + TRAIN_LAYERS * 2 * per_layer
    head_tokens = BATCH * REPLY if reply_head else tokens
    head = 2 * 2 * cfg.vocab_size * cfg.hidden_size * head_tokens
    return layers + head


def main() -> None:
    args = parse_mode(__doc__.splitlines()[0])
    repeats = 2 if args.quick else 5
    torch.manual_seed(0)
    model = smollm2.load_model(dtype="float32")
    trained = train_top_layers(model, TRAIN_LAYERS)
    optimizer = torch.optim.AdamW(trained, lr=1e-6)  # tiny: the weights barely move across the steps
    model.train()
    ids = torch.randint(0, model.config.vocab_size, (BATCH, LENGTH))
    labels = torch.full_like(ids, -100)
    labels[:, -REPLY:] = ids[:, -REPLY:]
    mask = torch.ones_like(ids)

    def step(name: str) -> tuple[float, float]:
        dtype, reply_head = METHODS[name]
        start = time.perf_counter()
        with matmul_autocast(dtype, torch.device("cpu")):
            if reply_head:
                loss = reply_loss(model, ids, mask, labels)
            else:
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)  # as `tune` does
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start, float(loss.detach())

    def matmul_rates() -> dict[str, float]:
        return {"fp32": _matmul_rate(torch.float32, 3 * repeats), "bf16": _matmul_rate(torch.bfloat16, 3 * repeats)}

    rates = matmul_rates()
    for name in METHODS:  # warm-up
        step(name)
    seconds: dict[str, list[float]] = {name: [] for name in METHODS}
    losses: dict[str, list[float]] = {name: [] for name in METHODS}
    for r in range(repeats):
        order = list(METHODS)[r % len(METHODS) :] + list(METHODS)[: r % len(METHODS)]  # rotated per repeat
        for name in order:
            s, loss = step(name)
            seconds[name].append(s)
            losses[name].append(loss)
    rates_after = matmul_rates()

    methods = {}
    for name, (dtype, reply_head) in METHODS.items():
        kind = "bf16" if dtype is not None else "fp32"
        flops = _step_flops(model, reply_head)
        rate = max(rates[kind], rates_after[kind])
        median = statistics.median(seconds[name])
        methods[name] = {
            "step_s": median,
            "tokens_per_s": BATCH * LENGTH / median,
            "step_gflop": flops / 1e9,
            "bound_s": flops / rate,
            "fraction_of_matmul_bound": flops / rate / median,
            "speedup_vs_fp32_full_head": statistics.median(seconds["fp32_full_head"]) / median,
            "samples_s": seconds[name],
            "loss_mean": statistics.mean(losses[name]),
        }
    results = {
        "batch": {"sequences": BATCH, "length": LENGTH, "reply_tokens_per_sequence": REPLY},
        "train_layers": TRAIN_LAYERS,
        "repeats": repeats,
        "matmul_gflops": {k: max(rates[k], rates_after[k]) / 1e9 for k in rates},
        "matmul_gflops_before_after": {k: [rates[k] / 1e9, rates_after[k] / 1e9] for k in rates},
        "methods": methods,
        "fairness": "same model, batch, trained layers, optimizer and threads for every method; methods rotated "
        "within each repeat after a warm-up step each",
        "note": "the matmul rate is the best of before/after the steps on one SmolLM2-shaped product; the "
        "bound counts matmul FLOPs only (norms, activations, AdamW and autograd bookkeeping are the rest)",
    }
    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    names = list(METHODS)
    ax.bar(names, [methods[n]["step_s"] for n in names], color=["tab:gray", "tab:blue", "tab:orange", "tab:green"])
    ax.scatter(names, [methods[n]["bound_s"] for n in names], marker="_", s=900, color="k", label="matmul bound")
    for i, n in enumerate(names):
        ax.text(i, methods[n]["step_s"], f"{methods[n]['speedup_vs_fp32_full_head']:.2f}x", ha="center", va="bottom")
    ax.set_ylabel("seconds per step (median)")
    ax.set_title(f"SmolLM2 tuning step: {BATCH}x{LENGTH} tokens, top {TRAIN_LAYERS} layers trained", fontsize=9)
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    write_result("tuning_step", results, [], figure=fig, args=args)  # the issue sets no goal: measure


if __name__ == "__main__":
    main()
