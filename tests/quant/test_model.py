import json

import pytest
import torch

from components.lm.model import GPT, GPTConfig
from components.quant import QuantLinear, QuantSpec
from components.quant.model import (calibrate, load_base_model, load_quantized, model_bits, quantize_model,
                                    save_quantized, target_linears)

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
    assert 2.0 < bits["bits_per_weight"] < 2.9


def test_loading_a_folder_that_is_not_quantized_says_so(tiny_gpt_folder):
    with pytest.raises(FileNotFoundError, match="quant_meta.json"):
        load_quantized(tiny_gpt_folder)


def test_unknown_model_source_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_base_model(str(tmp_path / "nowhere"))
