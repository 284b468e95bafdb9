"""u8 x s8 -> int32 conv2d (NHWC) and dense kernels in the layout x86 int8 intrinsics read.

The intrinsics in `x86_intrin` compute 16 output channels from 4 consecutive input
channels: 4 activation bytes (broadcast) against a 16x4 block of weight bytes. The
kernels here are written so that block is contiguous in memory, which is what lets
MetaSchedule tensorize them:
    activations  NHWC, channels innermost (4 consecutive input channels are adjacent)
    weights      packed at compile time (they are constants):
                 conv   [OC/16, KH, KW, IC/4, 16, 4]    dense  [N/16, K/4, 16, 4]
    output       NHWC / [..., N] int32, 16 consecutive output channels per instruction

Activations are unsigned (the instructions multiply u8 by s8): a symmetric int8
activation q is stored as q + 128, and the 128 * sum(w) it adds to every output channel
is subtracted afterwards as a per-channel int32 constant (`zero_point_correction`).
Padding uses 128, the stored form of 0.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx, topi

LANES, GROUP = 16, 4  # output channels per instruction, input channels per output lane
ZERO_POINT = 128


# Input channels need not be a multiple of 4: weights are padded with zeros and the
# kernel pads the activations (with 128, whose product with a zero weight is 0).
# Output channels must be a multiple of 16 (padding them would need a slice after the
# kernel, which stops the epilogue from fusing into it).


def conv2d_eligible(weight_ohwi_shape, groups: int) -> bool:
    return groups == 1 and weight_ohwi_shape[0] % LANES == 0


def dense_eligible(weight_kn_shape) -> bool:
    return weight_kn_shape[1] % LANES == 0


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def pack_conv2d_weight(w_ohwi: np.ndarray) -> np.ndarray:
    """[OC, KH, KW, IC] -> [OC/16, KH, KW, ceil(IC/4), 16, 4]."""
    oc, kh, kw, ic = w_ohwi.shape
    icp = _round_up(ic, GROUP)
    w = np.pad(w_ohwi, [(0, 0), (0, 0), (0, 0), (0, icp - ic)])
    return np.ascontiguousarray(w.reshape(oc // LANES, LANES, kh, kw, icp // GROUP, GROUP).transpose(0, 2, 3, 4, 1, 5))


def pack_dense_weight(w_kn: np.ndarray) -> np.ndarray:
    """[K, N] -> [N/16, ceil(K/4), 16, 4]."""
    k, n = w_kn.shape
    kp = _round_up(k, GROUP)
    w = np.pad(w_kn, [(0, kp - k), (0, 0)])
    return np.ascontiguousarray(w.reshape(kp // GROUP, GROUP, n // LANES, LANES).transpose(2, 0, 3, 1))


def zero_point_correction(w: np.ndarray, out_axis: int) -> np.ndarray:
    """-128 * sum(w) per output channel (int32): what the +128 of stored activations adds."""
    sums = np.moveaxis(w.astype(np.int64), out_axis, 0).reshape(w.shape[out_axis], -1).sum(axis=1)
    return (-ZERO_POINT * sums).astype(np.int32)


def _i64(dims) -> list:
    # Relax shapes are int64: a kernel with int32 buffer shapes cannot be fused with them.
    return [tirx.IntImm("int64", int(d)) for d in dims]


def conv2d_nhwc_u8s8(x_shape, packed_shape, strides, padding, dilation):
    """A PrimFunc (x uint8 NHWC, packed weight int8) -> int32 NHWC."""
    n, h, w, ic = x_shape
    ocb, kh, kw, icb, _, _ = packed_shape
    sh, sw = strides
    dh, dw = dilation
    pt, pl, pb, pr = padding
    data = te.placeholder(_i64(x_shape), "uint8", name="x")
    packed = te.placeholder(_i64(packed_shape), "int8", name="w")
    extra_c = icb * GROUP - ic
    x = data
    if any(padding) or extra_c:
        x = topi.nn.pad(data, [0, pt, pl, 0], [0, pb, pr, extra_c], pad_value=tirx.const(ZERO_POINT, "uint8"), name="x_pad")
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    rh = te.reduce_axis((0, kh), "rh")
    rw = te.reduce_axis((0, kw), "rw")
    rc = te.reduce_axis((0, icb * GROUP), "rc")
    out = te.compute(
        _i64((n, oh, ow, ocb * LANES)),
        lambda b, i, j, c: te.sum(
            x[b, i * sh + rh * dh, j * sw + rw * dw, rc].astype("int32")
            * packed[c // LANES, rh, rw, rc // GROUP, c % LANES, rc % GROUP].astype("int32"),
            axis=[rh, rw, rc],
        ),
        name="conv2d_u8s8",
    )
    return te.create_prim_func([data, packed, out])


def dense_u8s8(x_shape, packed_shape):
    """A PrimFunc (x uint8 [..., K], packed weight int8) -> int32 [..., N]."""
    nb, kb, _, _ = packed_shape
    data = te.placeholder(_i64(x_shape), "uint8", name="x")
    packed = te.placeholder(_i64(packed_shape), "int8", name="w")
    extra_k = kb * GROUP - x_shape[-1]
    x = data
    if extra_k:
        before = [0] * len(x_shape)
        x = topi.nn.pad(data, before, [*before[:-1], extra_k], pad_value=tirx.const(ZERO_POINT, "uint8"), name="x_pad")
    rk = te.reduce_axis((0, kb * GROUP), "rk")
    out = te.compute(
        _i64((*x_shape[:-1], nb * LANES)),
        lambda *idx: te.sum(
            x[(*idx[:-1], rk)].astype("int32")
            * packed[idx[-1] // LANES, rk // GROUP, idx[-1] % LANES, rk % GROUP].astype("int32"),
            axis=[rk],
        ),
        name="dense_u8s8",
    )
    return te.create_prim_func([data, packed, out])
