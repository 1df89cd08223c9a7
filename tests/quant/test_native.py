"""The lean Llama forward, its rollback cache, the GGUF loader (q/k row order) and the decoding hook."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from components.decoding.cache import SequenceRunner
from components.decoding.models import native_causal_lm, native_requantized, tiny_llama
from components.lm import smollm2
from components.quant import int_kernel
from components.quant.native import DenseMatrix, LeanLlama, load_native_smollm2

needs_kernel = pytest.mark.skipif(
    not int_kernel.available(), reason=f"no C++ toolchain: {int_kernel.unavailable_reason()}"
)


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(vocab_size=96, hidden=64, layers=2, heads=4, dtype=torch.float32)


def test_lean_forward_equals_transformers_and_rolls_back(tiny):
    lean = LeanLlama.from_hf(tiny)
    ids = torch.randint(0, 96, (1, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = tiny(ids).logits
    full, _ = lean.forward(ids)
    torch.testing.assert_close(full, ref, rtol=1e-4, atol=1e-4)
    part, cache = lean.forward(ids[:, :9])
    lean.forward(torch.tensor([[7, 8, 9]]), cache)  # a speculative block that gets rejected
    lean.crop(cache, 9)
    assert lean.cache_length(cache) == 9
    rest, cache = lean.forward(ids[:, 9:], cache)  # 4 tokens at once after the rollback
    torch.testing.assert_close(torch.cat([part, rest], 1), full, rtol=1e-5, atol=1e-5)


def test_engine_runner_drives_the_lean_model(tiny):
    model = native_causal_lm(LeanLlama.from_hf(tiny))
    runner = SequenceRunner(model)
    tokens = [3, 14, 15, 92, 6]
    for _ in range(6):  # greedy AR through the engine's runner
        tokens.append(int(runner.logits_for(tokens)[-1].argmax()))
    runner.check_consistent()
    with torch.no_grad():
        expected = tiny.generate(torch.tensor([tokens[:5]]), max_new_tokens=6, do_sample=False)[0].tolist()
    assert tokens == expected
    runner.rollback(7)
    runner.check_consistent()
    assert int(runner.logits_for(tokens[:8])[-1].argmax()) == tokens[8]


def _write_gguf(path, hf, q4_1: bool):
    """A GGUF like llama.cpp's converter writes: q/k rows permuted for its rotary layout, Q4_1 or Q8_0 blocks."""
    cfg = hf.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)

    def permute(w, n_head):
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    def mat(name, w):
        kind = GGMLQuantizationType.Q4_1 if q4_1 else GGMLQuantizationType.Q8_0
        writer.add_tensor(name, quants.quantize(np.ascontiguousarray(w, dtype=np.float32), kind), raw_dtype=kind)

    sd = {k: v.detach().float().numpy() for k, v in hf.state_dict().items()}
    mat("token_embd.weight", sd["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", sd["model.norm.weight"])
    for i in range(cfg.num_hidden_layers):
        p, h = f"blk.{i}.", f"model.layers.{i}."
        writer.add_tensor(p + "attn_norm.weight", sd[h + "input_layernorm.weight"])
        writer.add_tensor(p + "ffn_norm.weight", sd[h + "post_attention_layernorm.weight"])
        mat(p + "attn_q.weight", permute(sd[h + "self_attn.q_proj.weight"], cfg.num_attention_heads))
        mat(p + "attn_k.weight", permute(sd[h + "self_attn.k_proj.weight"], cfg.num_key_value_heads))
        for ours, theirs in (
            ("attn_v", "self_attn.v_proj"),
            ("attn_output", "self_attn.o_proj"),
            ("ffn_gate", "mlp.gate_proj"),
            ("ffn_up", "mlp.up_proj"),
            ("ffn_down", "mlp.down_proj"),
        ):
            mat(p + ours + ".weight", sd[h + theirs + ".weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@needs_kernel
@pytest.mark.parametrize("q4_1", [True, False])
def test_gguf_loader_restores_row_order_and_matches_the_dequantized_model(tmp_path, q4_1):
    hf = tiny_llama(vocab_size=64, hidden=64, layers=2, heads=4, dtype=torch.float32)  # 2 kv heads = 4 heads here
    path = tmp_path / "tiny.gguf"
    _write_gguf(path, hf, q4_1)
    native = load_native_smollm2(str(path))
    # the same model with every matrix dequantized to fp32, through the same forward
    dense = LeanLlama(
        native.shape,
        [
            type(layer)(
                layer.attn_norm,
                DenseMatrix(layer.qkv.dequantize()),
                DenseMatrix(layer.o.dequantize()),
                layer.ffn_norm,
                DenseMatrix(layer.gate_up.dequantize()),
                DenseMatrix(layer.down.dequantize()),
            )
            for layer in native.layers
        ],
        native.final_norm,
        DenseMatrix(native.head.dequantize()),
        "dense",
    )
    attn = hf.model.layers[1].self_attn
    wanted = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).detach()
    step = wanted.abs().max() / (7 if q4_1 else 64)
    assert (native.layers[1].qkv.dequantize() - wanted).abs().max() < step  # rows back in transformers' order
    ids = torch.randint(0, 64, (1, 11), generator=torch.Generator().manual_seed(1))
    got, ref = native.forward(ids)[0], dense.forward(ids)[0]
    torch.testing.assert_close(got, ref, rtol=1e-2, atol=1e-2)  # int8 + residual activations (rows out of order: O(1))
    assert native.greedy(ids[0].tolist(), 5) == dense.greedy(ids[0].tolist(), 5)


def test_bad_head_bits_is_refused():
    with pytest.raises(ValueError, match="head_bits"):
        load_native_smollm2("/nonexistent.gguf", head_bits=3)


@needs_kernel
@pytest.mark.slow
def test_native_smollm2_agrees_with_the_fp32_copy():
    native = load_native_smollm2()
    fp32 = LeanLlama.from_hf(smollm2.load_model())
    text = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    a, b = 0, 1\n    for _ in range(n):'
    ids = torch.tensor(smollm2.load_tokenizer()(text)["input_ids"])
    agree = (native.forward(ids)[0][0].argmax(-1) == fp32.forward(ids)[0][0].argmax(-1)).float().mean()
    assert agree >= 0.99
    runner = SequenceRunner(native_causal_lm(native))
    tokens = ids.tolist()
    for _ in range(8):
        tokens.append(int(runner.logits_for(tokens)[-1].argmax()))
    assert tokens[len(ids) :] == native.greedy(ids.tolist(), 8)


def test_one_position_steps_equal_the_block_forward(tiny):
    """T = 1 goes through the compiled attention step; it must compute what the block forward computes."""
    lean = LeanLlama.from_hf(tiny)
    ids = torch.randint(0, 96, (1, 11), generator=torch.Generator().manual_seed(5))
    full, _ = lean.forward(ids)
    logits, cache = lean.forward(ids[:, :3])
    steps = [logits]
    for t in range(3, 11):
        logits, cache = lean.forward(ids[:, t : t + 1], cache)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)
    lean.crop(cache, 6)  # roll back, then step again over the same positions
    again, cache = lean.forward(ids[:, 6:7], cache)
    torch.testing.assert_close(again[0, 0], full[0, 6], rtol=1e-4, atol=1e-4)


def _native_tiny(tmp_path, **shape):
    hf = tiny_llama(dtype=torch.float32, **shape)
    path = tmp_path / "tiny.gguf"
    _write_gguf(path, hf, q4_1=True)
    return load_native_smollm2(str(path))


def _decode_calls(model, ids: torch.Tensor) -> list[torch.Tensor]:
    """Prefill, single steps, a speculative block rolled back, then a block to the end: every call's logits."""
    outs = []
    logits, cache = model.forward(ids[:, :9])
    outs.append(logits)
    for t in range(9, 13):
        logits, cache = model.forward(ids[:, t : t + 1], cache)
        outs.append(logits)
    logits, cache = model.forward(ids[:, 13:18], cache)
    outs.append(logits)
    model.crop(cache, 15)
    logits, cache = model.forward(ids[:, 15:], cache)
    outs.append(logits)
    assert model.cache_length(cache) == ids.shape[1]
    return outs


def _assert_logits_close(got: list[torch.Tensor], ref: list[torch.Tensor]) -> None:
    # Both paths quantize the same activations; their float sums differ in order, which can move
    # an activation across an int8 rounding boundary: a difference of one activation step.
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-3 * float(b.abs().max()))


@needs_kernel
@pytest.mark.parametrize(
    "shape",
    [
        dict(vocab_size=64, hidden=64, layers=2, heads=4),
        dict(vocab_size=80, hidden=96, layers=3, heads=6, kv_heads=2),  # grouped-query, head_dim 16
    ],
)
def test_compiled_forward_equals_the_torch_forward(tmp_path, shape):
    """The whole-model compiled call (native 4-bit, and the 2-bit requantized draft) computes what the
    torch path computes, through prefill, single steps, a rolled-back block and a block after it."""
    native = _native_tiny(tmp_path, **shape)
    low = native_requantized(native_causal_lm(native), 2).lean
    for m in [low.head] + [m for layer in low.layers for m in (layer.qkv, layer.o, layer.gate_up, layer.down)]:
        # int8 + residual: with int8 alone one rounding flip in the first layer of this random (chaotic)
        # model moves later logits by several percent, which would hide a real difference between paths
        m.act_levels = 2
    ids = torch.randint(0, shape["vocab_size"], (1, 23), generator=torch.Generator().manual_seed(3))
    for model in (native, low):
        model.fused = True
        got = _decode_calls(model, ids)
        assert model._plan, "the compiled forward did not run"
        model.fused = False
        ref = _decode_calls(model, ids)
        _assert_logits_close(got, ref)


@needs_kernel
def test_compiled_forward_runs_two_callers_at_once(tmp_path):
    """The compiled call releases the GIL (a draft and a target decode on two threads): two threads on
    one model, each with its own cache, get what each gets alone."""
    native = _native_tiny(tmp_path, vocab_size=64, hidden=64, layers=2, heads=4)
    gen = torch.Generator().manual_seed(7)
    seqs = [torch.randint(0, 64, (1, 23), generator=gen) for _ in range(2)]
    alone = [_decode_calls(native, s) for s in seqs]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda s: _decode_calls(native, s), seqs * 3))
    for i, outs in enumerate(together):
        for a, b in zip(outs, alone[i % 2]):
            assert torch.equal(a, b)


@needs_kernel
def test_compiled_forward_refuses_positions_past_the_context(tmp_path):
    native = _native_tiny(tmp_path, vocab_size=64, hidden=64, layers=2, heads=4, max_positions=16)
    with pytest.raises(ValueError, match="exceed the context"):
        native.forward(torch.zeros(1, 17, dtype=torch.long))
