"""int8 conv2d (NHWC) and dense kernels in the layout CPU int8 dot-product instructions read.

The instructions compute LANES output channels from 4 consecutive input channels: 4
activation bytes (broadcast) against a LANES x 4 block of weight bytes (x86 VNNI/AVX2:
16 lanes, u8 x s8; ARM sdot: 4 lanes, s8 x s8). The kernels here are written so that
block is contiguous in memory, which is what lets MetaSchedule tensorize them:
    activations  NHWC, channels innermost (4 consecutive input channels are adjacent)
    weights      packed at compile time (they are constants):
                 conv   [OC/L, KH, KW, IC/4, L, 4]    dense  [N/L, K/4, L, 4]
    output       NHWC / [..., N] int32, L consecutive output channels per instruction

On x86 activations are unsigned (the instructions multiply u8 by s8): a symmetric int8
activation q is stored as q + 128, and the 128 * sum(w) it adds to every output channel
is subtracted afterwards as a per-channel int32 constant (`zero_point_correction`).
Padding uses the stored form of 0 (128 on x86, 0 on ARM).

Input channels need not be a multiple of 4: weights are padded with zeros and the kernel
pads the activations (with the zero point, whose product with a zero weight is 0).
Output channels must be a multiple of L (padding them would need a slice after the
kernel, which stops the epilogue from fusing into it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._tvm import te, tirx, topi

GROUP = 4  # input channels per instruction lane
BLOCK_NAME = "int8_packed"  # in the kernels' block names: how the tuner recognizes them


@dataclass(frozen=True)
class PackedInt8:
    """Which instruction a target's packed int8 kernels are tensorized with, and its shape."""

    intrinsic: str
    lanes: int  # output channels per instruction
    activation: str  # "uint8" (stored q + 128) or "int8"
    weight_max: int  # 63 where u8 x s8 pairs are summed in int16 with saturation (vpmaddubsw)

    @property
    def zero_point(self) -> int:
        return 128 if self.activation == "uint8" else 0


def conv2d_eligible(weight_ohwi_shape, groups: int, lanes: int) -> bool:
    return groups == 1 and weight_ohwi_shape[0] % lanes == 0


def dense_eligible(weight_kn_shape, lanes: int) -> bool:
    return weight_kn_shape[1] % lanes == 0


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def pack_conv2d_weight(w_ohwi: np.ndarray, lanes: int) -> np.ndarray:
    """[OC, KH, KW, IC] -> [OC/L, KH, KW, ceil(IC/4), L, 4]."""
    oc, kh, kw, ic = w_ohwi.shape
    icp = _round_up(ic, GROUP)
    w = np.pad(w_ohwi, [(0, 0), (0, 0), (0, 0), (0, icp - ic)])
    return np.ascontiguousarray(w.reshape(oc // lanes, lanes, kh, kw, icp // GROUP, GROUP).transpose(0, 2, 3, 4, 1, 5))


def pack_dense_weight(w_kn: np.ndarray, lanes: int) -> np.ndarray:
    """[K, N] -> [N/L, ceil(K/4), L, 4]."""
    k, n = w_kn.shape
    kp = _round_up(k, GROUP)
    w = np.pad(w_kn, [(0, kp - k), (0, 0)])
    return np.ascontiguousarray(w.reshape(kp // GROUP, GROUP, n // lanes, lanes).transpose(2, 0, 3, 1))


def zero_point_correction(w: np.ndarray, out_axis: int, zero_point: int = 128) -> np.ndarray:
    """-zero_point * sum(w) per output channel (int32): what the stored activations' offset adds."""
    sums = np.moveaxis(w.astype(np.int64), out_axis, 0).reshape(w.shape[out_axis], -1).sum(axis=1)
    return (-zero_point * sums).astype(np.int32)


def _i64(dims) -> list:
    # Relax shapes are int64: a kernel with int32 buffer shapes cannot be fused with them.
    return [tirx.IntImm("int64", int(d)) for d in dims]


def conv2d_nhwc_packed(x_shape, packed_shape, strides, padding, dilation, activation: str = "uint8", zero: int | None = None):
    """A PrimFunc (x uint8/int8 NHWC, packed weight int8) -> int32 NHWC. zero: the stored
    form of 0, which padding uses (default 128 for uint8, 0 for int8; an asymmetric
    activation's own zero point where a pre-quantized model gives one)."""
    n, h, w, ic = x_shape
    ocb, kh, kw, icb, lanes, _ = packed_shape
    zero = (128 if activation == "uint8" else 0) if zero is None else int(zero)
    sh, sw = strides
    dh, dw = dilation
    pt, pl, pb, pr = padding
    data = te.placeholder(_i64(x_shape), activation, name="x")
    packed = te.placeholder(_i64(packed_shape), "int8", name="w")
    extra_c = icb * GROUP - ic
    x = data
    if any(padding) or extra_c:
        x = topi.nn.pad(data, [0, pt, pl, 0], [0, pb, pr, extra_c], pad_value=tirx.const(zero, activation), name="x_pad")
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    rh = te.reduce_axis((0, kh), "rh")
    rw = te.reduce_axis((0, kw), "rw")
    rc = te.reduce_axis((0, icb * GROUP), "rc")
    out = te.compute(
        _i64((n, oh, ow, ocb * lanes)),
        lambda b, i, j, c: te.sum(
            x[b, i * sh + rh * dh, j * sw + rw * dw, rc].astype("int32")
            * packed[c // lanes, rh, rw, rc // GROUP, c % lanes, rc % GROUP].astype("int32"),
            axis=[rh, rw, rc],
        ),
        name=f"conv2d_{BLOCK_NAME}",
    )
    return te.create_prim_func([data, packed, out])


def dense_packed(x_shape, packed_shape, activation: str = "uint8"):
    """A PrimFunc (x uint8/int8 [..., K], packed weight int8) -> int32 [..., N]."""
    nb, kb, lanes, _ = packed_shape
    zero = 128 if activation == "uint8" else 0
    data = te.placeholder(_i64(x_shape), activation, name="x")
    packed = te.placeholder(_i64(packed_shape), "int8", name="w")
    extra_k = kb * GROUP - x_shape[-1]
    x = data
    if extra_k:
        before = [0] * len(x_shape)
        x = topi.nn.pad(data, before, [*before[:-1], extra_k], pad_value=tirx.const(zero, activation), name="x_pad")
    rk = te.reduce_axis((0, kb * GROUP), "rk")
    out = te.compute(
        _i64((*x_shape[:-1], nb * lanes)),
        lambda *idx: te.sum(
            x[(*idx[:-1], rk)].astype("int32")
            * packed[idx[-1] // lanes, rk // GROUP, idx[-1] % lanes, rk % GROUP].astype("int32"),
            axis=[rk],
        ),
        name=f"dense_{BLOCK_NAME}",
    )
    return te.create_prim_func([data, packed, out])
