"""Quantization schemes as frozen configs, looked up in a registry by type.

    Int8WeightOnly()                              int8 weights (per output channel), float compute
    Int8Static(observer="percentile")             int8 x int8 -> int32 conv/matmul, calibrated activations
    Fp16()                                        float16 with float32 accumulation, CUDA presets

CLI: `--quantize int8-weight`, `--quantize int8 --calibration-data FILE.npz
[--observer minmax|percentile|entropy] [--percentile 99.99] [--activations auto|static|dynamic]
[--smooth-alpha A|none]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real

from ...errors import TvmDeployError

CONFIG_VERSION = 2  # 2: Int8Static.activations and smooth_alpha (per-token scales, SmoothQuant)


class QuantizationError(TvmDeployError):
    """Quantization was asked for something it cannot do, or missed its accuracy budget."""


OBSERVERS = ("minmax", "percentile", "entropy")
# How int8 activations get their scale: "static" one per tensor, calibrated; "dynamic" one
# per row (token) computed at run time, max|x_row| / 127, for every matmul layer; "auto"
# dynamic for matmul layers whose input holds more than one row per call (token
# activations [B, T, K] / [B*T, K]), static for the rest (conv2d, a [1, K] classifier head).
ACTIVATIONS = ("auto", "static", "dynamic")
SMOOTH_ALPHA = 0.5  # SmoothQuant's default migration strength


@dataclass(frozen=True)
class Int8WeightOnly:
    """Symmetric int8 weights, one scale per output channel, decoded inside the kernel."""

    per_channel: bool = True
    max_accuracy_drop: float | None = None


@dataclass(frozen=True)
class Int8Static:
    """int8 activations (per tensor, calibrated) and weights (per channel), int32 accumulation."""

    observer: str = "minmax"  # "minmax" | "percentile" | "entropy" (KL divergence, as TensorRT)
    percentile: float = 99.99
    per_channel: bool = True
    max_accuracy_drop: float | None = None
    # Layers whose int8 SQNR on the calibration data (matmul: measured at its output;
    # conv2d: estimated from input and weight rounding noise) is below this stay in float;
    # None: every layer goes int8.
    min_layer_sqnr_db: float | None = None
    # Per-tensor (calibrated) or per-row (at run time) activation scales; see ACTIVATIONS.
    activations: str = "auto"
    # SmoothQuant: per input channel s = max|x|^a / max|W|^(1-a) moves activation outliers
    # into the weights (W' = diag(s) W, x' = x / s in the activation quantize) for the
    # matmul layers where it lowers the layer's int8 error on the calibration data.
    # None: no smoothing.
    smooth_alpha: float | None = SMOOTH_ALPHA

    def __post_init__(self):
        if self.observer not in OBSERVERS:
            raise QuantizationError(f"observer must be one of {', '.join(OBSERVERS)}, not {self.observer!r}")
        if not 50.0 < self.percentile <= 100.0:
            raise QuantizationError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.activations not in ACTIVATIONS:
            raise QuantizationError(f"activations must be one of {', '.join(ACTIVATIONS)}, not {self.activations!r}")
        if self.smooth_alpha is not None and not (
            isinstance(self.smooth_alpha, Real) and not isinstance(self.smooth_alpha, bool) and 0.0 <= self.smooth_alpha <= 1.0
        ):
            raise QuantizationError(f"smooth_alpha must be in [0, 1] (or None: no smoothing), got {self.smooth_alpha!r}")


@dataclass(frozen=True)
class Fp16:
    """float16 compute with float32 accumulation (CUDA presets)."""

    max_accuracy_drop: float | None = None


QuantizationConfig = Int8WeightOnly | Int8Static | Fp16
SCHEMES = {"int8-weight": Int8WeightOnly, "int8": Int8Static, "fp16": Fp16}


def scheme_name(config: QuantizationConfig) -> str:
    """The CLI/manifest name of a config's scheme (SCHEMES is the one place names live)."""
    return next(name for name, cls in SCHEMES.items() if cls is type(config))


def parse_quantize_spec(spec: str, **options) -> QuantizationConfig:
    cls = SCHEMES.get(spec)
    if cls is None:
        raise QuantizationError(f"unknown quantization {spec!r}; choose one of {', '.join(SCHEMES)}")
    given = {k: v for k, v in options.items() if v is not None}
    unknown = set(given) - set(cls.__dataclass_fields__)
    if unknown:
        raise QuantizationError(f"--quantize {spec} takes no {', '.join('--' + u.replace('_', '-') for u in sorted(unknown))}")
    if isinstance(given.get("smooth_alpha"), str):
        given["smooth_alpha"] = parse_smooth_alpha(given["smooth_alpha"])
    return cls(**given)


def parse_smooth_alpha(text: str) -> float | None:
    """--smooth-alpha: a number in [0, 1], or none/off (no smoothing)."""
    if text.strip().lower() in ("none", "off"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise QuantizationError(f"smooth_alpha must be a number in [0, 1] or none, not {text!r}") from None
    Int8Static(smooth_alpha=value)  # the range check
    return value
