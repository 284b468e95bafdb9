"""Winograd F(4x4, 3x3) for fp32 NHWC convolutions: the two transform kernels and the
transformed weight. The multiplications in between are a grouped 1x1 convolution, which
the packed conv kernel (kernels/fp32_packed.py) already runs at its register-blocked
best, so passes/winograd_conv2d.py emits

    V = winograd_input(x)           [1, 1, P, 36*C]    P = N x ceil(OH/4) x ceil(OW/4) tiles
    M = conv2d(V, U, groups=36)     [1, 1, P, 36*K]    U = G w G^T per (tile point, k, c)
    y = winograd_output(M)          [N, OH, OW, K]     (+ the epilogue FuseOps attaches)

Each output tile of 4x4 pixels costs 36 multiply-adds per (input, output) channel pair
instead of 144: 4x fewer. The transforms read and write every tile once, vectorized
over channels (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
The matrices are the usual ones with interpolation points 0, +-1, +-2; in fp32 the
outputs differ from a direct convolution by about 1e-5 of their largest magnitude.

The transforms are written as explicit sums of the matrices' nonzero entries: TE's
reduce over a constant matrix would leave a multiply by zero for every zero entry
(about a third of them), which the compiler may not drop for floats.
"""

from __future__ import annotations

import numpy as np

from .._tvm import te, tirx, topi

TILE = 4  # output pixels per tile side: F(4x4, 3x3)
POINTS = TILE + 2  # transformed tile side (alpha)
INPUT_BLOCK = "winograd_input"  # block names: how the schedules recognize the kernels
OUTPUT_BLOCK = "winograd_output"

# F(4, 3): input transform B^T, weight transform G, output transform A^T.
INPUT_MATRIX = np.array(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    dtype=np.float64,
)
WEIGHT_MATRIX = np.array(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    dtype=np.float64,
)
OUTPUT_MATRIX = np.array(
    [
        [1, 1, 1, 1, 1, 0],
        [0, 1, -1, 2, -2, 0],
        [0, 1, 1, 4, 4, 0],
        [0, 1, -1, 8, -8, 1],
    ],
    dtype=np.float64,
)


def tiles(out_height: int, out_width: int) -> tuple[int, int]:
    return -(-out_height // TILE), -(-out_width // TILE)


def transform_weight(w_ohwi: np.ndarray) -> np.ndarray:
    """[K, 3, 3, C] -> the grouped 1x1 conv weight [36 * K, 1, 1, C] (OHWI): group
    e1 * 6 + e2 holds (G w G^T)[e1, e2] for every (k, c). In float32 (each entry sums at
    most 9 products), one axis at a time: nothing bigger than the result is allocated."""
    k, _, _, c = w_ohwi.shape
    g = WEIGHT_MATRIX.astype(np.float32)
    u = np.einsum("ar,krsc,bs->abkc", g, np.asarray(w_ohwi, dtype=np.float32), g, optimize=True)
    return np.ascontiguousarray(u.reshape(POINTS * POINTS * k, 1, 1, c), dtype=np.float32)


def _linear_combination(matrix: np.ndarray, row, term):
    """sum_r matrix[row, r] * term(r) for a loop variable `row`: a Select over the rows'
    explicit sums, zero entries left out, which folds to one sum once `row` is unrolled."""
    out = None
    for i in reversed(range(matrix.shape[0])):
        total = None
        for r in np.flatnonzero(matrix[i]):
            value, coefficient = term(int(r)), float(matrix[i, r])
            if coefficient == -1:
                value = -value
            elif coefficient != 1:
                value = value * tirx.const(coefficient, "float32")
            total = value if total is None else total + value
        out = total if out is None else tirx.Select(row == i, total, out)
    return out


def _i64(*dims) -> list:
    return [tirx.IntImm("int64", int(d)) for d in dims]


def winograd_input(x_shape, padding, dtype: str = "float32"):
    """A PrimFunc: x NHWC -> V [1, 1, P, 36*C], V[p, (e1*6 + e2)*C + c] = (B^T d B)[e1, e2]
    of tile p's 6x6 input patch d (zero outside the padded input)."""
    n, h, w, c = x_shape
    pt, pl, pb, pr = padding
    th, tw = tiles(h + pt + pb - 2, w + pl + pr - 2)
    data = te.placeholder(_i64(*x_shape), dtype, name="x")
    pad_after = [0, th * TILE + 2 - h - pt, tw * TILE + 2 - w - pl, 0]
    x = topi.nn.pad(data, [0, pt, pl, 0], pad_after, pad_value=tirx.const(0.0, dtype), name=f"{INPUT_BLOCK}_pad")
    b_t = INPUT_MATRIX
    rows = te.compute(
        _i64(n, th, tw, POINTS, POINTS, c),
        lambda b, i, j, e1, q, ch: _linear_combination(b_t, e1, lambda r: x[b, i * TILE + r, j * TILE + q, ch]),
        name=f"{INPUT_BLOCK}_rows",
    )
    tiles6 = te.compute(
        _i64(n, th, tw, POINTS, POINTS, c),
        lambda b, i, j, e1, e2, ch: _linear_combination(b_t, e2, lambda r: rows[b, i, j, e1, r, ch]),
        name=INPUT_BLOCK,
    )
    per_image, per_point = th * tw, POINTS * c
    out = te.compute(
        _i64(1, 1, n * per_image, POINTS * per_point),
        lambda _z, _y, p, a: tiles6[p // per_image, p % per_image // tw, p % tw, a // per_point, a % per_point // c, a % c],
        name=f"{INPUT_BLOCK}_flat",
    )
    return te.create_prim_func([data, out])


def winograd_output(n: int, out_height: int, out_width: int, channels: int, dtype: str = "float32"):
    """A PrimFunc: M [1, 1, P, 36*K] -> y NHWC [N, OH, OW, K], y's tile = A^T m A."""
    th, tw = tiles(out_height, out_width)
    products = te.placeholder(_i64(1, 1, n * th * tw, POINTS * POINTS * channels), dtype, name="m")
    a_t = OUTPUT_MATRIX
    columns = te.compute(
        _i64(n, th, tw, POINTS, TILE, channels),
        lambda b, i, j, e1, q, ch: _linear_combination(
            a_t, q, lambda r: products[0, 0, (b * th + i) * tw + j, (e1 * POINTS + r) * channels + ch]
        ),
        name=f"{OUTPUT_BLOCK}_columns",
    )
    out = te.compute(
        _i64(n, out_height, out_width, channels),
        lambda b, y, x, ch: _linear_combination(
            a_t, y % TILE, lambda r: columns[b, y // TILE, x // TILE, r, x % TILE, ch]
        ),
        name=OUTPUT_BLOCK,
    )
    return te.create_prim_func([products, out])
