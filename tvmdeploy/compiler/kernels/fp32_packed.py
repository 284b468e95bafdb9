"""fp32 conv2d in NHWC with weights packed at compile time: one compute for regular,
grouped and depthwise convolutions (1x1 included), and the register-blocked schedule
that makes it fast on CPUs.

Layouts:
    activations  NHWC: channels innermost, so L consecutive output channels are one vector
    weights      [ceil(OC/L), KH, KW, IC/groups, L]   (constants, packed here with numpy)
    output       NHWC

The micro-kernel keeps a tile of RW output columns x V vectors of L output channels in
vector registers; per input channel it loads V weight vectors, broadcasts RW input
values and issues RW x V fused multiply-adds (the scheme ONNX Runtime's MLAS uses, in
NHWC rather than NCHWc so that consecutive layers need no layout change and a depthwise
convolution reads whole channel vectors). L is the target's fp32 vector width (16 on
AVX-512, 8 on AVX2, 4 on NEON); RW and V come from the register count, so the untuned default is a
real schedule (both in kernels/fp32_schedule.py).

A dense layer (matmul by a constant [K, N] weight) is the 1x1 convolution over its rows:
activations [..., M, K] (channels innermost already), the weight packed [N/L, 1, 1, K, L]
(the issue's [N/L, K, L], with the 1x1 kernel's unit axes kept so the schedule reads
both kinds alike) and output [..., M, N]; the same RW rows x V vectors micro-kernel.

A depthwise convolution is the same compute with one input channel per group: its
input index is the output channel itself, so the RW x V tile reads channel vectors.
Output channel counts that are not a multiple of L are padded per group to one (zero
weights; the graph slices the extra channels off, kernels/fp32_packed.padded_channels)
where that adds at most half the work, else they use the largest divisor of the channels
per group that fits a vector; either way a vector never straddles two groups.
"""

from __future__ import annotations

import numpy as np

from .._tvm import te, tirx, topi

BLOCK_NAME = "fp32_packed"  # in the kernels' block names: how the scheduler recognizes them
CONV_BLOCK = f"conv2d_{BLOCK_NAME}"
DENSE_BLOCK = f"dense_{BLOCK_NAME}"
TRANSPOSED_INPUT_BLOCK = "x_nhwc"  # an NCHW input read as NHWC (conv2d_nhwc_packed's nchw_input)


def lanes_for(channels_per_group: int, vector_lanes: int) -> int:
    """Output channels per packed block: the vector width when it divides the channels
    of a group, else the largest divisor of them that fits one vector."""
    if channels_per_group % vector_lanes == 0:
        return vector_lanes
    return max(d for d in range(1, min(vector_lanes, channels_per_group) + 1) if channels_per_group % d == 0)


def conv_lanes(out_channels: int, groups: int, vector_lanes: int) -> int:
    if groups == 1:
        return lanes_for(out_channels, vector_lanes)
    per_group = out_channels // groups
    # Depthwise (one output channel per group): lanes span groups, which is what we want.
    return lanes_for(out_channels, vector_lanes) if per_group == 1 else lanes_for(per_group, vector_lanes)


# Most extra work padding a group's output channels to whole vectors may add: ShuffleNet's
# 34 channels per group -> 48 (1.41x the FLOPs) run at 16 lanes instead of 2.
MAX_PADDED_WORK = 1.5


# Most extra work rounding an ungrouped conv's odd vector count up to an even one may add:
# an odd count leaves the register tile one vector of channels wide (a 2-vector tile must
# divide the count). SqueezeNet's 1000-class conv (13x13x512, AVX-512): 63 vectors ran
# 1397 us with a 13 x 1 tile, 64 vectors (1.6 % more work) 1092 us with 13 x 2.
MAX_PAIR_WORK = 1.0625


def padded_channels(out_channels: int, groups: int, vector_lanes: int) -> int:
    """Output channels per group the kernel computes: the channels per group rounded up
    to whole vectors where that adds at most MAX_PADDED_WORK, else unchanged (depthwise
    convolutions' vectors span groups and are never padded); an ungrouped conv's odd
    vector count is rounded up to an even one where that adds at most MAX_PAIR_WORK."""
    per_group = out_channels // groups
    if per_group == 1:
        return per_group
    vectors = -(-per_group // vector_lanes)
    if groups == 1 and vectors > 1 and vectors % 2 and (vectors + 1) * vector_lanes <= MAX_PAIR_WORK * per_group:
        return (vectors + 1) * vector_lanes
    if per_group % vector_lanes == 0:
        return per_group
    padded = vectors * vector_lanes
    return padded if padded <= MAX_PADDED_WORK * per_group else per_group


def pad_conv2d_weight(w_ohwi: np.ndarray, groups: int, per_group: int) -> np.ndarray:
    """[OC, KH, KW, IC/groups] -> [groups * per_group, ...], each group's rows zero-padded."""
    oc, kh, kw, icg = w_ohwi.shape
    grouped = w_ohwi.reshape(groups, oc // groups, kh, kw, icg)
    padded = np.zeros((groups, per_group, kh, kw, icg), dtype=w_ohwi.dtype)
    padded[:, : oc // groups] = grouped
    return padded.reshape(groups * per_group, kh, kw, icg)


def pack_conv2d_weight(w_ohwi: np.ndarray, lanes: int) -> np.ndarray:
    """[OC, KH, KW, IC/groups] -> [OC/L, KH, KW, IC/groups, L]."""
    oc, kh, kw, icg = w_ohwi.shape
    return np.ascontiguousarray(w_ohwi.reshape(oc // lanes, lanes, kh, kw, icg).transpose(0, 2, 3, 4, 1))


def _i64(dims) -> list:
    return [tirx.IntImm("int64", int(d)) for d in dims]


def conv2d_nhwc_packed(x_shape, packed_shape, out_channels: int, groups: int, strides, padding, dilation,
                       dtype="float32", nchw_input: bool = False):
    """A PrimFunc (x NHWC, packed weight) -> NHWC output with `out_channels` channels.
    nchw_input: x comes NCHW (`x_shape` too) and is read transposed, in the pass that pads
    it (a graph's NCHW input then needs no transpose kernel of its own)."""
    if nchw_input:
        n, _, h, w = x_shape
    else:
        n, h, w, _ = x_shape
    _, kh, kw, icg, lanes = packed_shape
    ocg = out_channels // groups
    sh, sw = strides
    dh, dw = dilation
    pt, pl, pb, pr = padding
    data = te.placeholder(_i64(x_shape), dtype, name="x")
    packed = te.placeholder(_i64(packed_shape), dtype, name="w")
    x = data
    if nchw_input:
        x = te.compute(_i64((n, h, w, x_shape[1])), lambda b, i, j, c: data[b, c, i, j], name=TRANSPOSED_INPUT_BLOCK)
    if any(padding):
        x = topi.nn.pad(x, [0, pt, pl, 0], [0, pb, pr, 0], pad_value=tirx.const(0.0, dtype), name="x_pad")
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    rh = te.reduce_axis((0, kh), "rh")
    rw = te.reduce_axis((0, kw), "rw")
    rc = te.reduce_axis((0, icg), "rc")
    out = te.compute(
        _i64((n, oh, ow, out_channels)),
        lambda b, i, j, c: te.sum(
            x[b, i * sh + rh * dh, j * sw + rw * dw, (c // ocg) * icg + rc] * packed[c // lanes, rh, rw, rc, c % lanes],
            axis=[rh, rw, rc],
        ),
        name=CONV_BLOCK,
    )
    return te.create_prim_func([data, packed, out])


def pack_dense_weight(w_kn: np.ndarray, lanes: int) -> np.ndarray:
    """[K, N] -> [N/L, 1, 1, K, L]: a dense weight as the packed weight of a 1x1 conv."""
    k, n = w_kn.shape
    return pack_conv2d_weight(np.ascontiguousarray(w_kn.T).reshape(n, 1, 1, k), lanes)


def dense_packed(x_shape, packed_shape, dtype="float32"):
    """A PrimFunc (x [..., M, K], packed weight) -> [..., M, N] with N = the packed
    weight's columns (N/L x L; the caller slices off padding)."""
    blocks, _, _, k, lanes = packed_shape
    data = te.placeholder(_i64(x_shape), dtype, name="x")
    packed = te.placeholder(_i64(packed_shape), dtype, name="w")
    rk = te.reduce_axis((0, k), "rk")
    zero = tirx.IntImm("int64", 0)
    out = te.compute(
        _i64((*x_shape[:-1], blocks * lanes)),
        lambda *i: te.sum(data[(*i[:-1], rk)] * packed[i[-1] // lanes, zero, zero, rk, i[-1] % lanes], axis=[rk]),
        name=DENSE_BLOCK,
    )
    return te.create_prim_func([data, packed, out])
