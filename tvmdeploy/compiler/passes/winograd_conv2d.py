"""WinogradConv2dFp32: fp32 NHWC 3x3 convolutions (stride 1, no dilation, no groups,
constant weight) -> Winograd F(4x4, 3x3), 4x fewer multiplications per output tile:

    conv2d(x, W)  ->  call_tir(winograd_output, [conv2d(call_tir(winograd_input, [x]), U, groups=36)])

U, the transformed weight, is computed here (kernels/fp32_winograd.py). The conv2d in
the middle is a grouped 1x1 convolution that PackConv2dFp32, which runs next, turns into
the packed register-blocked kernel, so the multiplications run on the same micro-kernel,
default tile and tuning space as every other conv. The input transform is marked opaque
(it fuses with nothing: the conv reads its output as it is), the output transform
out-elementwise-fusable like a conv, so the bias, activation and residual add after it
join its kernel.

ResNet-50's and SqueezeNet's 3x3 shapes, the three kernels against the direct packed
conv, each timed alone (AMD Zen 4, 2 threads): 0.27x-0.58x.

A convolution is left direct where Winograd saves less than half the multiplications
(small outputs, whose 4x4 tiles are mostly past the edge: 5x5 and under, except 3x3),
where it has fewer than MIN_TILES tiles (its 4x larger weight would be streamed for
little work), or where its channels are not whole vectors (the transforms run one vector
of channels at a time).
"""

from __future__ import annotations

import numpy as np
from tvm import IRModule, relax
from tvm.ir.transform import PassContext, module_pass

from .._tvm import OP_PATTERN_OPAQUE, OP_PATTERN_OUT_ELEMWISE_FUSABLE
from ..analysis.channels import static_shape
from ..kernels.fp32_winograd import (
    INPUT_BLOCK,
    OUTPUT_BLOCK,
    POINTS,
    tiles,
    transform_weight,
    winograd_input,
    winograd_output,
)
from .call_rewrite import add_kernel, count_calls, rewrite_calls
from .carry import carries_errors
from .pack_conv2d import packable_conv2d

MIN_SAVING = 2.0  # direct multiplications per Winograd one, at least
# Tiles per conv (batch x tile rows x tile columns), at least. The transformed weight is
# 4x the weight (36 points against 9 taps) and each of its elements serves one multiply-add
# per tile: with few tiles the conv streams weights instead of computing, and the
# artifact grows for nothing. ResNet-50's 7x7 stage has 4 tiles: with Winograd there too
# the artifact was 97.6 MB, without it 59.9 MB (46.6 MB all direct), at the same speed
# (43.1 against 42.6 ms, one interleaved bench; 49.4 ms all direct).
MIN_TILES = 8


def winograd_saving(out_height: int, out_width: int) -> float:
    """Direct multiplications per Winograd multiplication for one (input, output)
    channel pair: 9 per output pixel against 36 per 4x4 tile."""
    th, tw = tiles(out_height, out_width)
    return 9 * out_height * out_width / (POINTS * POINTS * th * tw)


def winograd_eligible(call: relax.Call, vector_lanes: int) -> bool:
    if not packable_conv2d(call):
        return False
    a = call.attrs
    k, kh, kw, c = (int(d) for d in call.args[1].ty.shape)
    n, oh, ow, _ = static_shape(call)
    th, tw = tiles(oh, ow)
    return (
        (kh, kw) == (3, 3)
        and [int(s) for s in a.strides] == [1, 1]
        and [int(d) for d in a.dilation] == [1, 1]
        and int(a.groups) == 1
        and c % vector_lanes == 0
        and k % vector_lanes == 0
        and winograd_saving(oh, ow) >= MIN_SAVING
        and n * th * tw >= MIN_TILES
    )


def count_winograd(mod: IRModule, vector_lanes: int) -> int:
    return count_calls(mod, lambda expr: winograd_eligible(expr, vector_lanes))


@module_pass(opt_level=0, name="WinogradConv2dFp32")
class WinogradConv2dFp32:
    """vector_lanes: the target's fp32 vector width (16 AVX-512, 8 AVX2, 4 NEON)."""

    def __init__(self, vector_lanes: int):
        self.vector_lanes = int(vector_lanes)

    @carries_errors
    def transform_module(self, mod: IRModule, ctx: PassContext) -> IRModule:
        lanes = self.vector_lanes
        rewritten = rewrite_calls(mod, lambda bb, call: winograd_call(bb, call) if winograd_eligible(call, lanes) else None)
        return relax.transform.Normalize()(rewritten)


def _add_kernel(builder: relax.BlockBuilder, func, name: str, op_pattern: int):
    return add_kernel(builder, func.with_attr("op_pattern", op_pattern), name)


def winograd_call(builder: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    data, weight = call.args
    x_shape, out_shape = static_shape(data), static_shape(call)
    n, oh, ow, k = out_shape
    c = x_shape[3]
    th, tw = tiles(oh, ow)
    flat = [1, 1, n * th * tw]
    padding = [int(p) for p in call.attrs.padding]
    to_input = _add_kernel(builder, winograd_input(x_shape, padding), INPUT_BLOCK, OP_PATTERN_OPAQUE)
    transformed = builder.emit(relax.call_tir(to_input, relax.Tuple([data]), relax.TensorType([*flat, POINTS * POINTS * c], "float32")))
    u = transform_weight(np.asarray(weight.value.numpy(), dtype=np.float32))
    products = relax.op.nn.conv2d(
        transformed, relax.const(u), groups=POINTS * POINTS, data_layout="NHWC", kernel_layout="OHWI"
    )
    products = builder.emit(products)
    to_output = _add_kernel(builder, winograd_output(n, oh, ow, k), OUTPUT_BLOCK, OP_PATTERN_OUT_ELEMWISE_FUSABLE)
    return relax.call_tir(to_output, relax.Tuple([products]), relax.TensorType(list(out_shape), "float32"))
