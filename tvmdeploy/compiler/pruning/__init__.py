"""Pruning on Relax: structured (smaller dense compute) and magnitude (smaller artifact)."""

from .config import (
    MagnitudePruning,
    PruningConfig,
    PruningError,
    StructuredPruning,
    parse_prune_spec,
)

__all__ = ["MagnitudePruning", "PruningConfig", "PruningError", "StructuredPruning", "parse_prune_spec"]
