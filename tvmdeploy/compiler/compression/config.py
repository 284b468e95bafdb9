"""Compression schemes as frozen configs, looked up by type.

    LowRank(rank_ratio=0.25)      every eligible layer at a quarter of its full rank
    LowRank(rank=16)              rank 16 wherever that saves compute
    LowRank(energy=0.9)           the rank that keeps 90 % of each layer's singular-value energy
    LowRank()                     energy 0.9 without a budget; per-layer ranks from the
                                  sensitivity scan with --max-accuracy-drop
    Clustering(bits=4)            every layer's weights shared among 16 values (k-means)
    Clustering()                  per-layer bits from the scan (needs --max-accuracy-drop)

CLI spelling: `--compress lowrank:0.25`, `--compress lowrank:rank=16`,
`--compress lowrank:energy=0.9`, `--compress cluster:4`, `--compress cluster:4,per_channel=1`,
`--compress lowrank --max-accuracy-drop 1.0`; `--compress` may be given more than once.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import TvmDeployError
from ..scheme_spec import split_spec

CONFIG_VERSION = 1
DEFAULT_ENERGY = 0.9
MIN_BITS, MAX_BITS = 2, 8
BITS_GRID = (8, 6, 5, 4, 3, 2)  # the scan's levels, mildest first
RANK_GRID = (0.5, 0.375, 0.25, 0.1875, 0.125, 0.0625)  # fractions of a layer's full rank


class CompressionError(TvmDeployError):
    """Compression was asked for something it cannot do, or missed its accuracy budget."""


def _check_drop(drop: float | None) -> None:
    if drop is not None and not 0.0 <= drop <= 100.0:
        raise CompressionError(f"--max-accuracy-drop is in points (0..100), got {drop}")


@dataclass(frozen=True)
class LowRank:
    """conv2d / matmul weights replaced by two thinner factors (truncated SVD), only
    where that reduces multiply-accumulates."""

    rank_ratio: float | None = None  # rank = ceil(ratio * full rank)
    rank: int | None = None  # the same rank for every layer
    energy: float | None = None  # smallest rank keeping this fraction of sum(sigma^2)
    max_accuracy_drop: float | None = None

    def __post_init__(self):
        _check_drop(self.max_accuracy_drop)
        given = [n for n in ("rank_ratio", "rank", "energy") if getattr(self, n) is not None]
        if len(given) > 1:
            raise CompressionError(f"low-rank takes one of rank_ratio, rank or energy, not {' and '.join(given)}")
        if self.rank_ratio is not None and not 0.0 < self.rank_ratio < 1.0:
            raise CompressionError(f"low-rank rank ratio must be in (0, 1), got {self.rank_ratio} (lowrank:0.25)")
        if self.rank is not None and (int(self.rank) != self.rank or self.rank < 1):
            raise CompressionError(f"low-rank rank must be a whole number >= 1, got {self.rank}")
        if self.energy is not None and not 0.0 < self.energy < 1.0:
            raise CompressionError(f"low-rank energy must be in (0, 1), got {self.energy} (lowrank:energy=0.9)")

    @property
    def searched(self) -> bool:
        """No rank of its own: under a budget, per-layer ranks come from the scan (without
        one, the energy threshold picks them)."""
        return self.rank_ratio is None and self.rank is None and self.energy is None


@dataclass(frozen=True)
class Clustering:
    """Each layer's weights snapped to 2**bits shared values (1-D k-means); the artifact
    stores bits-bit indices plus the values."""

    bits: int | None = None
    per_channel: bool = False  # one codebook per output channel instead of per layer
    max_accuracy_drop: float | None = None

    def __post_init__(self):
        _check_drop(self.max_accuracy_drop)
        if self.bits is not None and (int(self.bits) != self.bits or not MIN_BITS <= self.bits <= MAX_BITS):
            raise CompressionError(f"cluster bits must be a whole number in {MIN_BITS}..{MAX_BITS}, got {self.bits} (cluster:4)")
        if self.bits is None and self.max_accuracy_drop is None:
            raise CompressionError("clustering needs bits (cluster:4) or --max-accuracy-drop to pick them per layer")

    @property
    def searched(self) -> bool:
        return self.bits is None


CompressionConfig = LowRank | Clustering
SCHEMES = {"lowrank": LowRank, "cluster": Clustering}
_FIRST_OPTION = {LowRank: "rank_ratio", Clustering: "bits"}
_INTEGER = {"rank", "bits"}
_FLAGS = {"per_channel"}


def scheme_name(config: CompressionConfig) -> str:
    """The CLI/manifest name of a config's scheme (SCHEMES is the one place names live)."""
    return next(name for name, cls in SCHEMES.items() if cls is type(config))


def parse_compress_spec(spec: str, max_accuracy_drop: float | None = None) -> CompressionConfig:
    """'lowrank:0.25', 'lowrank:rank=16', 'lowrank:energy=0.9', 'cluster:4', 'cluster:4,per_channel=1'."""
    def first_option(cls, item):
        return ("per_channel", "1") if item in _FLAGS else (_FIRST_OPTION[cls], item)

    cls, scheme, options = split_spec(
        spec, SCHEMES, CompressionError, "compression", "lowrank:0.25, cluster:4", first_option
    )
    kwargs: dict = {"max_accuracy_drop": max_accuracy_drop}
    for key, value in options.items():
        try:
            number = float(value)
        except ValueError:
            raise CompressionError(f"{scheme} option {key} must be a number, got {value!r}") from None
        if key in _INTEGER or key in _FLAGS:
            if number != int(number):
                raise CompressionError(f"{scheme} option {key} must be a whole number, got {value!r}")
            number = bool(number) if key in _FLAGS else int(number)
        kwargs[key] = number
    return cls(**kwargs)
