"""LayerNorm over the last axis for CPUs, scheduled as a row kernel (kernels/rows.py).

    sum      s = sum_k x[k]                     partial sums in a vector
    center   c[k] = x[k] - s / n                once per element, kept for the row
    sqsum    q = sum_k c[k]^2                   partial sums in a vector (two passes:
                                                no cancellation on rows with a large mean)
    norm     y[k] = c[k] / sqrt(q / n + eps) * gamma[k] + beta[k]

TVM's layer_norm (one tuple reduction of sum and sum of squares) left scalar by
MetaSchedule's default: a BERT-base layer's LayerNorm (128 x 768) took 159 us.
"""

from __future__ import annotations

from .._tvm import te, tirx
from .rows import RowKernel, holds, row_schedule, row_space

BLOCK_NAME = "layer_norm_rows"
SUM, CENTER, SQSUM, NORM = (f"{BLOCK_NAME}_{step}" for step in ("sum", "center", "sqsum", "norm"))
KERNEL = RowKernel(reductions=(SUM, SQSUM), row_buffers=(CENTER,), inlined=(), output=NORM)
PRODUCERS = (SUM, CENTER, SQSUM)


def layer_norm_rows(x: "te.Tensor", gamma: "te.Tensor", beta: "te.Tensor", epsilon: float) -> "te.Tensor":
    """LayerNorm of a float32 tensor over its last axis, gamma and beta of that length (for bb.call_te)."""
    n = x.shape[-1]
    inv_n = tirx.const(1.0 / int(n), x.dtype)
    eps = tirx.const(float(epsilon), x.dtype)
    k = te.reduce_axis((0, n), "k")
    total = te.compute(x.shape[:-1], lambda *r: te.sum(x[(*r, k)], axis=k), name=SUM)
    centered = te.compute(x.shape, lambda *i: x[i] - total[i[:-1]] * inv_n, name=CENTER)
    k2 = te.reduce_axis((0, n), "k2")
    squares = te.compute(x.shape[:-1], lambda *r: te.sum(centered[(*r, k2)] * centered[(*r, k2)], axis=k2), name=SQSUM)
    return te.compute(
        x.shape,
        lambda *i: centered[i] * tirx.rsqrt(squares[i[:-1]] * inv_n + eps) * gamma[i[-1]] + beta[i[-1]],
        name=NORM,
    )


def layer_norm_rows_schedule(func, vector_lanes: int, threads: int):
    """The default schedule of a layer_norm_rows kernel (None: not one, or another shape)."""
    return row_schedule(func, KERNEL, PRODUCERS, vector_lanes, threads) if holds(func, BLOCK_NAME) else None


def layer_norm_rows_space(vector_lanes: int, threads: int):
    return row_space(KERNEL, PRODUCERS, vector_lanes, threads)
