import json

import pytest
import torch

from components.decoding.models import tiny_llama
from components.lm.model import GPT, GPTConfig
from components.quant import QuantLinear, QuantSpec
from components.quant.model import (
    calibrate,
    dequantized_once,
    load_base_model,
    load_quantized,
    model_bits,
    quantize_model,
    save_quantized,
    target_linears,
)

TINY = GPTConfig(vocab_size=96, block_size=32, n_layer=2, n_head=2, n_embd=64)


@pytest.fixture
def tiny_gpt_folder(tmp_path):
    torch.manual_seed(0)
    return GPT(TINY).save(tmp_path / "gpt")


def test_quantized_model_saves_and_reloads_to_identical_outputs(tiny_gpt_folder, tmp_path):
    model, base = load_base_model(str(tiny_gpt_folder))
    ids = torch.randint(0, TINY.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
    stats = calibrate(model, [ids], list(target_linears(model)), hessian=True)
    spec = QuantSpec(method="gptq", score="hessian_error", frac_high=0.25)
    layouts = quantize_model(model, spec, stats, mode="naive")
    assert set(layouts) == {n for n in target_linears(GPT(TINY)) if "blocks" in n}  # lm_head tied: stays dense
    before = model(ids, use_cache=False)[0]
    folder = save_quantized(model, tmp_path / "q", spec, base)
    meta = json.loads((folder / "quant_meta.json").read_text())
    assert meta["spec"]["method"] == "gptq" and meta["base"]["kind"] == "gpt"
    loaded = load_quantized(folder, mode="naive")
    assert sum(isinstance(m, QuantLinear) for m in loaded.modules()) == len(layouts)
    assert loaded.lm_head.weight is loaded.wte.weight  # tying survives the round trip
    torch.testing.assert_close(loaded(ids, use_cache=False)[0], before, rtol=0, atol=0)


def test_model_bits_counts_every_quantized_layer(tiny_gpt_folder):
    model, _ = load_base_model(str(tiny_gpt_folder))
    quantize_model(model, QuantSpec(frac_high=0.25))
    bits = model_bits(model)
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert bits["quantized_weights"] == sum(m.in_features * m.out_features for m in layers)
    assert bits["quantized_bits"] == sum(sum(m.bits().values()) for m in layers)
    assert 2.0 < bits["bits_per_weight"] < 4.0  # 64-wide rows: the per-row second-order bases weigh more


def test_loading_a_folder_that_is_not_quantized_says_so(tiny_gpt_folder):
    with pytest.raises(FileNotFoundError, match="quant_meta.json"):
        load_quantized(tiny_gpt_folder)


def test_unknown_model_source_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_base_model(str(tmp_path / "nowhere"))


def test_transformers_llama_round_trip(tmp_path):
    """The SmolLM2 path (a transformers Llama), on a tiny random Llama: what `serve` loads."""
    model = tiny_llama(128, hidden=64, heads=4, kv_heads=2, dtype=torch.float32, tie_embeddings=True)
    model.save_pretrained(tmp_path / "llama")
    model, base = load_base_model(str(tmp_path / "llama"))
    spec = QuantSpec(frac_high=0.25)
    layouts = quantize_model(model, spec, mode="naive")
    assert len(layouts) == 2 * 7  # q, k, v, o, gate, up, down per layer; the tied lm_head stays dense
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(2))
    before = model(ids, use_cache=False).logits
    loaded = load_quantized(save_quantized(model, tmp_path / "q", spec, base), mode="naive")
    torch.testing.assert_close(loaded(ids, use_cache=False).logits, before, rtol=0, atol=0)
    # decoding with the KV cache through QuantLinear (the fused path where the kernel is built)
    loaded_auto = load_quantized(tmp_path / "q")
    out = loaded_auto.generate(ids, max_new_tokens=3, do_sample=False, min_new_tokens=3)
    assert out.shape == (1, 15)


def test_dequantized_once_gives_the_naive_outputs_and_cleans_up(tiny_gpt_folder):
    model, _ = load_base_model(str(tiny_gpt_folder))
    quantize_model(model, QuantSpec(frac_high=0.25), mode="auto")
    ids = torch.randint(0, TINY.vocab_size, (1, 16), generator=torch.Generator().manual_seed(2))
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    for m in layers:
        m.mode = "naive"
    naive = model(ids, use_cache=False)[0]
    for m in layers:
        m.mode = "auto"
    with dequantized_once(model):
        assert all(m.mode == "naive" and m.dense_cache is not None for m in layers)
        cached = model(ids, use_cache=False)[0]
    torch.testing.assert_close(cached, naive, rtol=0, atol=0)
    assert all(m.mode == "auto" and m.dense_cache is None for m in layers)
