"""What a quantization method is: one dataclass, the schema of every conf/quant_method/*.yaml option."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from components.checks import ConfigError

# the named methods (the quantize flow's `quant_method=<name>` and `baselines`, the benchmarks' rows)
METHOD_DIR = Path(__file__).resolve().parents[2] / "conf" / "quant_method"

METHODS = ("none", "rtn", "hqq", "gptq")
SCORES = ("range", "range_act", "hessian_error", "fisher", "random")
SCALE_FORMATS = ("u8", "fp16")
ZERO_FORMATS = ("u8", "int", "fp16")


@dataclass
class QuantSpec:
    """A weight-quantization scheme. `frac_high=0` is plain low-bit, `frac_high=1` plain high-bit."""

    name: str = "mixed"  # the label in tables, plots and the saved metadata
    method: str = "rtn"  # how codes are fitted: rtn (min/max), hqq (half-quadratic), gptq (error feedback), none (fp32)
    bits_low: int = 2  # most groups: the paper's 2-bit weights
    bits_high: int = 4  # the largest-range groups: 4 bits, as in the paper
    frac_high: float = 0.25  # share of groups at bits_high; 0.25 keeps the total under 2.9 bits/weight at group 64
    group_size: int = (
        64  # weights per (scale, zero) along in_features; a multiple of 16 keeps every group whole int32 words
    )
    tile_rows: int = 16  # alignment unit: every tile of this many output rows holds the same number of 4-bit groups
    score: str = (
        "range"  # which groups get bits_high: range (the paper), range_act, hessian_error, fisher, random (ablation)
    )
    # > 0 (needs score=fisher): 4-bit groups allocated across layers up to this exact bits/weight; frac_high unused
    bit_budget: float = 0.0
    scale_format: str = "u8"  # u8: scales quantized again to 8 bits per row (second order); fp16: plain half scales
    # u8: group minimum quantized to 8 bits per row (second order); int: integer zero in the group's bits (GPTQ);
    # fp16 (HQQ)
    zero_format: str = "u8"
    gptq_damp: float = 0.01  # GPTQ: diagonal damping as a fraction of mean(diag H), keeps the inverse stable
    gptq_block: int = 128  # GPTQ: columns updated together (lazy batch updates); a multiple of group_size
    seed: int = 0  # only the `random` score uses it
    # tied embedding / LM head: None keeps it fp32; 4 or 2: asymmetric groups of group_size, counted in bits/weight
    head_bits: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def bad(field: str, allowed) -> ConfigError:
            return ConfigError(f"QuantSpec.{field}", getattr(self, field), f"is not one of {allowed}")

        if self.method not in METHODS:
            raise bad("method", METHODS)
        if self.score not in SCORES:
            raise bad("score", SCORES)
        if self.scale_format not in SCALE_FORMATS:
            raise bad("scale_format", SCALE_FORMATS)
        if self.zero_format not in ZERO_FORMATS:
            raise bad("zero_format", ZERO_FORMATS)
        for field in ("bits_low", "bits_high"):
            if getattr(self, field) not in (2, 4, 8):
                raise bad(field, (2, 4, 8))
        if self.head_bits is not None and self.head_bits not in (2, 4):
            raise bad("head_bits", (None, 2, 4))
        if not 0.0 <= self.frac_high <= 1.0:
            raise ValueError(f"QuantSpec.frac_high must be in [0, 1], got {self.frac_high}")
        if self.group_size <= 0 or self.group_size % 16:
            raise ValueError(
                f"QuantSpec.group_size must be a positive multiple of 16 (whole int32 words "
                f"for 2-bit codes), got {self.group_size}"
            )
        if self.tile_rows <= 0:
            raise ValueError(f"QuantSpec.tile_rows must be positive, got {self.tile_rows}")
        if self.bit_budget and self.score != "fisher":
            raise ValueError(
                f"QuantSpec.bit_budget={self.bit_budget} allocates by Fisher gain across layers: it needs "
                f"score='fisher', got score={self.score!r}"
            )
        if self.bit_budget < 0:
            raise ValueError(f"QuantSpec.bit_budget must be >= 0 (0: frac_high in every layer), got {self.bit_budget}")
        if self.method == "gptq" and self.gptq_block % self.group_size:
            raise ValueError(
                f"QuantSpec.gptq_block={self.gptq_block} must be a multiple of group_size={self.group_size}"
            )

    @property
    def quantizes(self) -> bool:
        return self.method != "none"

    def to_dict(self) -> dict:
        return asdict(self)

    def calibration_needs(self) -> tuple[bool, bool, bool]:
        """(a calibration pass needed, layer Hessians needed, the loss's Fisher diagonal needed)."""
        hessian = self.quantizes and self.method == "gptq"
        fisher = self.quantizes and self.score == "fisher"
        activations = self.score in ("range_act", "hessian_error")
        return self.quantizes and (hessian or fisher or activations), hessian, fisher


def method_spec(name: str, folder: Path = METHOD_DIR) -> QuantSpec:
    """The named method: conf/quant_method/<name>.yaml's values over QuantSpec's defaults."""
    path = folder / f"{name}.yaml"
    if not path.exists():
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ValueError(f"unknown quant method {name!r}; {folder} has {options}")
    return QuantSpec(**(yaml.safe_load(path.read_text()) or {}))
