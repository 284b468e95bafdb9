"""Low-rank factorization of a layer's weight: the numbers.

A conv2d weight (O, I, kh, kw) or a matmul weight (K, N) is viewed as a matrix M with
one row per output channel (O x I*kh*kw, or N x K). Its truncated SVD, M ~ P @ Q with
P = U_r sqrt(S_r) and Q = sqrt(S_r) V_r^T, becomes two layers: a conv2d with r output
channels and the original kernel, then a 1x1 conv2d from r to O (or x @ Q^T @ P^T for a
matmul). Per output pixel that costs r * (I*kh*kw + O) multiply-accumulates instead of
O * I*kh*kw, so a rank only pays below O*K / (O + K).

With calibration data the factors are data-aware: what matters is the layer's output
W @ X on real inputs X, not W itself, so the SVD is taken of W @ L, where L L^T is the
covariance of the layer's input patches, and Q is mapped back through L^-1. This is the
best rank-r approximation of W @ X (trained convolutions are rarely low-rank by
themselves; their inputs' covariance is).
"""

from __future__ import annotations

import hashlib

import numpy as np

from .config import DEFAULT_ENERGY, RANK_GRID, LowRank


def as_matrix(weight: np.ndarray, out_axis: int) -> np.ndarray:
    """The weight as (output channels, everything else)."""
    return np.moveaxis(weight, out_axis, 0).reshape(weight.shape[out_axis], -1)


def from_matrix(matrix: np.ndarray, shape: tuple[int, ...], out_axis: int) -> np.ndarray:
    moved = list(shape)
    moved.insert(0, moved.pop(out_axis))
    return np.moveaxis(matrix.reshape(moved), 0, out_axis)


def break_even_rank(rows: int, cols: int) -> int:
    """The largest rank whose two factors cost fewer multiply-accumulates than the layer."""
    return (rows * cols - 1) // (rows + cols)


_SVD_CACHE: dict = {}


def svd(matrix: np.ndarray):
    """Cached by content: the sensitivity scan asks for the same layer's SVD many times."""
    key = hashlib.sha1(np.ascontiguousarray(matrix).tobytes()).hexdigest() + str(matrix.shape)
    if key not in _SVD_CACHE:
        if len(_SVD_CACHE) > 256:
            _SVD_CACHE.clear()
        _SVD_CACHE[key] = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
    return _SVD_CACHE[key]


def factors(matrix: np.ndarray, rank: int, covariance: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(P, Q) with P @ Q the best rank-`rank` approximation of matrix (of matrix @ X, given
    the covariance X X^T of the inputs); float32."""
    if covariance is None:
        u, s, vt = svd(matrix)
        root = np.sqrt(s[:rank])
        return (u[:, :rank] * root).astype(np.float32), (root[:, None] * vt[:rank]).astype(np.float32)
    chol = _cholesky(covariance)
    u, s, vt = svd(matrix.astype(np.float64) @ chol)
    root = np.sqrt(s[:rank])
    q = np.linalg.solve(chol.T, (root[:, None] * vt[:rank]).T).T  # (S^1/2 V^T) L^-1
    return (u[:, :rank] * root).astype(np.float32), q.astype(np.float32)


def _cholesky(covariance: np.ndarray) -> np.ndarray:
    """L with L L^T = covariance, regularised so that directions the data never took still
    keep a little weight (a dead input must not make the solve singular)."""
    c = covariance.astype(np.float64)
    damp = 1e-4 * max(float(np.trace(c)) / c.shape[0], 1e-12)
    return np.linalg.cholesky(c + damp * np.eye(c.shape[0]))


def approximate(weight: np.ndarray, out_axis: int, rank: int, covariance: np.ndarray | None = None) -> np.ndarray:
    """The weight the factorized layer computes with (P @ Q, in the weight's own layout)."""
    p, q = factors(as_matrix(weight, out_axis), rank, covariance)
    return from_matrix(p @ q, weight.shape, out_axis).astype(weight.dtype)


def input_rows(x: np.ndarray, layer, call) -> np.ndarray:
    """The layer's input x as rows of (I*kh*kw) (NCHW/OIHW) or (kh*kw*I) (NHWC/OHWI) patches,
    or of (K) features (matmul): the columns of its weight matrix (as_matrix)."""
    if layer.op == "matmul":
        return x.reshape(-1, x.shape[-1])
    attrs = call.attrs
    kh, kw = layer.weight_shape[2:] if layer.layout == "NCHW" else layer.weight_shape[1:3]
    if layer.layout != "NCHW":
        x = x.transpose(0, 3, 1, 2)
    top, left, bottom, right = (int(v) for v in attrs.padding)
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    (sh, sw), (dh, dw) = (int(v) for v in attrs.strides), (int(v) for v in attrs.dilation)
    window = np.lib.stride_tricks.sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    window = window[:, :, ::sh, ::sw, ::dh, ::dw]  # (N, I, oh, ow, kh, kw)
    if layer.layout == "NCHW":
        return window.transpose(0, 2, 3, 1, 4, 5).reshape(-1, window.shape[1] * kh * kw)
    return window.transpose(0, 2, 3, 4, 5, 1).reshape(-1, kh * kw * window.shape[1])


def energy_rank(matrix: np.ndarray, energy: float, covariance: np.ndarray | None = None) -> int:
    s = svd(matrix if covariance is None else matrix.astype(np.float64) @ _cholesky(covariance))[1]
    total = float((s ** 2).sum())
    if total == 0:
        return 1
    return int(np.searchsorted(np.cumsum(s ** 2) / total, energy - 1e-12) + 1)


def rank_grid(rows: int, cols: int, multiple: int = 1) -> list[int]:
    """The scan's ranks for one layer, highest first: fractions of the full rank that pay
    (rounded up to a multiple of `multiple`: the first factor's output channels, which
    packed int8 kernels take in blocks)."""
    full, limit = min(rows, cols), break_even_rank(rows, cols)
    ranks = sorted({-(-max(1, int(np.ceil(f * full))) // multiple) * multiple for f in RANK_GRID}, reverse=True)
    return [r for r in ranks if r <= limit]


def fixed_rank(config: LowRank, matrix: np.ndarray, covariance: np.ndarray | None = None) -> int:
    """The rank a config without a budget gives this layer (it may not pay: callers check)."""
    rows, cols = matrix.shape
    if config.rank is not None:
        return int(config.rank)
    if config.rank_ratio is not None:
        return max(1, int(np.ceil(config.rank_ratio * min(rows, cols))))
    return energy_rank(matrix, config.energy if config.energy is not None else DEFAULT_ENERGY, covariance)


def covariance(rows: list[np.ndarray], max_rows: int = 20000) -> np.ndarray:
    """X X^T / n of a layer's input rows (a seeded subsample past max_rows)."""
    x = np.concatenate(rows)
    if x.shape[0] > max_rows:
        x = x[np.random.default_rng(0).choice(x.shape[0], max_rows, replace=False)]
    x = x.astype(np.float64)
    return x.T @ x / max(x.shape[0], 1)
