import pytest
import torch

from components.quant import QuantLinear, QuantSpec, fused_cpu, quantize_weight, reference_dequantize
from components.quant.quantizer import hqq_params
from tests.quant.test_quantizer import llm_like_weight

SPECS = {
    "mixed_u8_int": QuantSpec(frac_high=0.25),
    "rtn2": QuantSpec(frac_high=0.0),
    "rtn4": QuantSpec(frac_high=1.0),
    "mixed_int_zero": QuantSpec(frac_high=0.25, zero_format="int"),
    "mixed_fp16": QuantSpec(frac_high=0.3, scale_format="fp16", zero_format="fp16", tile_rows=8),
}


@pytest.fixture(scope="module")
def fused_ok():
    return fused_cpu.available()


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("rows", [1, 5])
def test_forward_paths_match_the_reference(name, rows, fused_ok):
    w = llm_like_weight(96, 256)
    bias = torch.randn(96)
    packed = quantize_weight(w, SPECS[name], bias=bias)
    layer = QuantLinear.from_packed(packed)
    x = torch.randn(2, rows, 256, generator=torch.Generator().manual_seed(rows))
    expected = x @ reference_dequantize(packed.layout, packed.tensors).t() + bias
    modes = ["naive", "pipelined"] + (["fused"] if fused_ok else [])
    for mode in modes:
        layer.mode = mode
        got = layer(x)
        assert got.shape == (2, rows, 96)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5, msg=f"mode={mode}")


@pytest.mark.parametrize("group_size", [16, 32, 64, 128])
@pytest.mark.parametrize("bits_high", [4, 8])
@pytest.mark.parametrize("rows", [1, 3, 9])
def test_fused_kernel_matches_the_reference_for_every_group_size(group_size, bits_high, rows, fused_ok):
    """The kernel has unrolled cases (one row at groups 32/64) and a batch-row blocking of 8: cover them."""
    if not fused_ok:
        pytest.skip(f"no C++ toolchain: {fused_cpu.unavailable_reason()}")
    w = llm_like_weight(48, 256)
    packed = quantize_weight(w, QuantSpec(group_size=group_size, bits_high=bits_high, frac_high=0.3))
    layer = QuantLinear.from_packed(packed, mode="fused")
    x = torch.randn(rows, 256, generator=torch.Generator().manual_seed(group_size + rows))
    expected = x @ reference_dequantize(packed.layout, packed.tensors).t()
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-5)


def test_fused_kernel_builds_here(fused_ok):
    if not fused_ok:
        pytest.skip(f"no C++ toolchain: {fused_cpu.unavailable_reason()}")
    assert fused_cpu.load() is not None


def test_pipelined_handles_more_chunks_than_tiles():
    packed = quantize_weight(llm_like_weight(32, 128), QuantSpec(tile_rows=16))
    layer = QuantLinear.from_packed(packed, mode="pipelined", pipeline_chunks=7)
    x = torch.randn(3, 128)
    torch.testing.assert_close(layer(x), x @ layer.dequantize().t())


def test_gptq_lowers_the_output_error_on_correlated_inputs():
    gen = torch.Generator().manual_seed(0)
    w = llm_like_weight(64, 128)
    mix = torch.randn(128, 128, generator=gen) * 0.3 + torch.eye(128)
    x = torch.randn(2048, 128, generator=gen) @ mix
    hessian = x.t() @ x / x.shape[0]

    def out_err(spec):
        layer = QuantLinear.from_packed(quantize_weight(w, spec, hessian=hessian), mode="naive")
        return float((layer(x) - x @ w.t()).pow(2).mean())

    for zero_format in ("u8", "int"):
        assert out_err(QuantSpec(method="gptq", frac_high=0.25, zero_format=zero_format)) < out_err(
            QuantSpec(method="rtn", frac_high=0.25, zero_format=zero_format)
        )


def test_hqq_fits_if_installed():
    pytest.importorskip("hqq")
    w = llm_like_weight(32, 128)
    spec = QuantSpec(method="hqq", frac_high=0.0, scale_format="fp16", zero_format="fp16")
    layer = QuantLinear.from_packed(quantize_weight(w, spec), mode="naive")
    rel = float((layer.dequantize() - w).norm() / w.norm())
    assert rel < 0.6  # a real fit, not garbage


def test_hqq_fit_cache_returns_the_fresh_fit(tmp_path, monkeypatch):
    pytest.importorskip("hqq")

    groups = llm_like_weight(32, 128).reshape(-1, 64)
    monkeypatch.setenv("QUANT_HQQ_CACHE", "")
    fresh = hqq_params(groups, 2)
    monkeypatch.setenv("QUANT_HQQ_CACHE", str(tmp_path))
    first, again = hqq_params(groups, 2), hqq_params(groups, 2)
    assert len(list(tmp_path.glob("*.pt"))) == 1  # fitted once, then read back
    for a, b, c in zip(fresh, first, again):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(b, c, rtol=0, atol=0)
    hqq_params(groups, 4)
    assert len(list(tmp_path.glob("*.pt"))) == 2  # the bit width is part of the key
