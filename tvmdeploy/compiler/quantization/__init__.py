"""Quantization on Relax: int8 weight-only and calibrated int8 with int8 compute."""

from .config import (
    Fp16,
    Int8Static,
    Int8WeightOnly,
    QuantizationConfig,
    QuantizationError,
    parse_quantize_spec,
)

__all__ = ["Fp16", "Int8Static", "Int8WeightOnly", "QuantizationConfig", "QuantizationError", "parse_quantize_spec"]
