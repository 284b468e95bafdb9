"""Shrinking the optimized graph: prune -> low-rank -> cluster -> quantize (see stages.py),
one accuracy budget across them (joint.py)."""

from .stages import ORDER, ShrunkGraph, shrink_graph

__all__ = ["ORDER", "ShrunkGraph", "shrink_graph"]
