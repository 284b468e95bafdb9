"""Weight sharing: 1-D k-means of a layer's weights into 2**bits values.

Lloyd's algorithm on the sorted weights (each step is a searchsorted over the midpoints
between centroids), started from evenly spaced quantiles, so the result is deterministic.
The clustered weight holds at most 2**bits distinct values; the weights file then stores
it as bits-bit indices plus a codebook (runtime/weights_file.py).
"""

from __future__ import annotations

import hashlib

import numpy as np

_CACHE: dict = {}
ITERATIONS = 100


def kmeans_1d(values: np.ndarray, k: int) -> np.ndarray:
    """Centroids (sorted, at most k) minimising the squared error of snapping `values`."""
    flat = np.sort(values.astype(np.float64).reshape(-1))
    distinct = np.unique(flat)
    if distinct.size <= k:
        return distinct
    centroids = np.unique(np.quantile(flat, (np.arange(k) + 0.5) / k))
    prefix = np.concatenate([[0.0], np.cumsum(flat)])
    for _ in range(ITERATIONS):
        edges = np.searchsorted(flat, (centroids[1:] + centroids[:-1]) / 2)
        starts = np.concatenate([[0], edges])
        ends = np.concatenate([edges, [flat.size]])
        counts = ends - starts
        keep = counts > 0
        updated = (prefix[ends[keep]] - prefix[starts[keep]]) / counts[keep]
        if updated.size == centroids.size and np.allclose(updated, centroids, rtol=0, atol=1e-12):
            break
        centroids = updated
    return centroids


def snap(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Every value replaced by its nearest centroid."""
    edges = (centroids[1:] + centroids[:-1]) / 2
    return centroids[np.searchsorted(edges, values)]


def cluster_weight(weight: np.ndarray, bits: int, out_axis: int, per_channel: bool = False) -> np.ndarray:
    """The weight with each layer's (or output channel's) values shared among 2**bits."""
    key = (hashlib.sha1(np.ascontiguousarray(weight).tobytes()).hexdigest(), weight.shape, bits, out_axis, per_channel)
    if key not in _CACHE:
        if len(_CACHE) > 512:
            _CACHE.clear()
        k = 1 << bits
        if per_channel:
            moved = np.moveaxis(weight, out_axis, 0)
            rows = [snap(row, kmeans_1d(row, k)) for row in moved.reshape(moved.shape[0], -1)]
            clustered = np.moveaxis(np.stack(rows).reshape(moved.shape), 0, out_axis)
        else:
            clustered = snap(weight, kmeans_1d(weight, k))
        _CACHE[key] = clustered.astype(weight.dtype)
    return _CACHE[key]
