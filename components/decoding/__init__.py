"""Autoregressive, vanilla speculative and PEARL parallel speculative decoding with one KV-cache abstraction."""

from components.decoding.engine import (
    METHODS,
    AutoregressiveDecoder,
    Decoder,
    DecodeStats,
    SpeculativeDecoder,
    build_decoder,
    measure_cost_ratio,
)
from components.decoding.sampling import SamplingParams

__all__ = [
    "METHODS",
    "AutoregressiveDecoder",
    "DecodeStats",
    "Decoder",
    "SpeculativeDecoder",
    "SamplingParams",
    "build_decoder",
    "measure_cost_ratio",
]
