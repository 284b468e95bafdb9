"""Compression of trained weights beyond pruning and int8: low-rank factorization and
weight sharing (clustering)."""

from .config import (
    Clustering,
    CompressionConfig,
    CompressionError,
    LowRank,
    parse_compress_spec,
)

__all__ = ["Clustering", "CompressionConfig", "CompressionError", "LowRank", "parse_compress_spec"]
