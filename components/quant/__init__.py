"""Range-aware mixed 2/4-bit weight quantization (arXiv 2311.16442): packing, QuantLinear, save/load.

The public surface: `QuantSpec` (what a method is), `quantize_weight` / `QuantLinear` (one layer),
`quantize_model` / `save_quantized` / `load_quantized` (a whole causal LM), `perplexity`.
"""

from components.quant.linear import QuantLinear, reference_dequantize
from components.quant.model import load_quantized, model_bits, quantize_model, save_quantized
from components.quant.quantizer import LayerLayout, PackedWeight, quantize_weight
from components.quant.spec import QuantSpec

__all__ = [
    "QuantSpec",
    "QuantLinear",
    "LayerLayout",
    "PackedWeight",
    "quantize_weight",
    "reference_dequantize",
    "quantize_model",
    "save_quantized",
    "load_quantized",
    "model_bits",
]
