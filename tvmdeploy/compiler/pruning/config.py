"""Pruning schemes as frozen configs, looked up by type.

    StructuredPruning(ratio=0.3)                 remove 30 % of the output channels of every prunable layer
    StructuredPruning(max_accuracy_drop=1.0)     per-layer ratios from a sensitivity scan
    MagnitudePruning(ratio=0.5)                  zero the 50 % smallest weights (global ranking)
    MagnitudePruning(alpha=1.0)                  zero |w| < 1.0 * mean|W| in every layer

CLI spelling: `--prune structured:0.3`, `--prune magnitude:0.5`, `--prune magnitude:alpha=1.0`,
`--prune structured --max-accuracy-drop 1.0`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import TvmDeployError
from ..scheme_spec import split_spec

CONFIG_VERSION = 1
RATIO_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


class PruningError(TvmDeployError):
    """Pruning was asked for something it cannot do, or missed its accuracy budget."""


def _check_ratio(ratio: float | None) -> None:
    if ratio is not None and not 0.0 <= ratio < 1.0:
        raise PruningError(f"pruning ratio must be in [0, 1), got {ratio}")


def _check_drop(drop: float | None) -> None:
    if drop is not None and not 0.0 <= drop <= 100.0:
        raise PruningError(f"--max-accuracy-drop is in points (0..100), got {drop}")


@dataclass(frozen=True)
class StructuredPruning:
    """Remove whole output channels (conv2d) / output features (matmul)."""

    ratio: float | None = None  # None: chosen per layer by the sensitivity scan
    norm: str = "l1"  # channel ranking: "l1" or "l2" norm of the channel's weights
    max_accuracy_drop: float | None = None  # points of top-1 (accuracy, or agreement without labels)

    def __post_init__(self):
        _check_ratio(self.ratio)
        _check_drop(self.max_accuracy_drop)
        if self.norm not in ("l1", "l2"):
            raise PruningError(f"structured pruning norm must be 'l1' or 'l2', not {self.norm!r}")
        if self.ratio is None and self.max_accuracy_drop is None:
            raise PruningError("structured pruning needs a ratio (structured:0.3) or --max-accuracy-drop")


@dataclass(frozen=True)
class MagnitudePruning:
    """Zero the smallest weights; the artifact stores the weights compactly."""

    ratio: float | None = None
    scope: str = "global"  # "global": one threshold for all layers; "layer": the ratio in every layer
    alpha: float | None = None  # zero |w| < alpha * mean|W| per layer (instead of a ratio)
    max_accuracy_drop: float | None = None

    def __post_init__(self):
        _check_ratio(self.ratio)
        _check_drop(self.max_accuracy_drop)
        if self.scope not in ("global", "layer"):
            raise PruningError(f"magnitude pruning scope must be 'global' or 'layer', not {self.scope!r}")
        if self.alpha is not None and self.alpha < 0:
            raise PruningError(f"magnitude pruning alpha must be >= 0, got {self.alpha}")
        if self.ratio is None and self.alpha is None and self.max_accuracy_drop is None:
            raise PruningError("magnitude pruning needs a ratio (magnitude:0.5), alpha=... or --max-accuracy-drop")


PruningConfig = StructuredPruning | MagnitudePruning
SCHEMES = {"structured": StructuredPruning, "magnitude": MagnitudePruning}


def scheme_name(config: PruningConfig) -> str:
    """The CLI/manifest name of a config's scheme (SCHEMES is the one place names live)."""
    return next(name for name, cls in SCHEMES.items() if cls is type(config))


def parse_prune_spec(spec: str, max_accuracy_drop: float | None = None) -> PruningConfig:
    """'structured:0.3', 'magnitude:0.5', 'magnitude:alpha=1.0,scope=layer', 'structured'."""
    cls, scheme, options = split_spec(
        spec, SCHEMES, PruningError, "pruning", "structured:0.3", lambda cls, item: ("ratio", item)
    )
    kwargs: dict = {"max_accuracy_drop": max_accuracy_drop}
    for key, value in options.items():
        try:
            kwargs[key] = value if key in ("norm", "scope") else float(value)
        except ValueError:
            raise PruningError(f"{scheme} pruning option {key} must be a number, got {value!r}") from None
    return cls(**kwargs)
