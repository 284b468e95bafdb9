"""PackConv2dFp32: fp32 NHWC conv2d with a constant weight -> our packed kernel.

    conv2d(x NHWC, W OHWI constant)  ->  call_tir(conv2d_fp32_packed, [x, pack(W)])

The weight is packed once here ([OC/L, KH, KW, IC/groups, L], kernels/fp32_packed.py),
so the artifact stores it in the layout the kernel reads; FuseOps then fuses the bias,
activation and residual add after it like any conv. Where a group's output channels are
padded to whole vectors (SqueezeNet's 1000 classes, ShuffleNet's 34 channels per group),
the kernel computes the padded channels and a slice drops them:

    conv2d(x, W)  ->  strided_slice(call_tir(packed, [x, pack(pad(W))]), axis C)           groups == 1
                  ->  reshape(strided_slice(reshape(call_tir(...), [N,H,W,G,Cp]), :C/G), [N,H,W,C])

the slice then fuses with what follows (bias, activation, a channel shuffle) into one
injective kernel. An ungrouped conv of an NCHW tensor's transpose (what ConvertLayout puts
between an NCHW graph input and the first conv) reads the NCHW tensor itself, transposed in
the pass that pads it, and the transpose kernel goes (kernels/fp32_packed.py,
`nchw_input`; SqueezeNet's cost 105 us of 3.9 ms). Convolutions in another layout,
dtype, or with a weight computed at run time are left as they are.
"""

from __future__ import annotations

import numpy as np
from tvm import IRModule, relax
from tvm.ir import Op
from tvm.ir.transform import PassContext, module_pass

from .._tvm import RelaxConstant
from ..analysis.channels import static_shape
from ..kernels.fp32_packed import (
    CONV_BLOCK,
    conv2d_nhwc_packed,
    conv_lanes,
    pack_conv2d_weight,
    pad_conv2d_weight,
    padded_channels,
)
from .call_rewrite import add_kernel, count_calls, rewrite_calls
from .carry import carries_errors

CONV2D = Op.get("relax.nn.conv2d")
PERMUTE_DIMS = Op.get("relax.permute_dims")
NCHW_TO_NHWC = [0, 2, 3, 1]


def packable_conv2d(call: relax.Call, layouts: tuple[str, str] = ("NHWC", "OHWI")) -> bool:
    """A float32 conv2d with static shapes and a constant weight, in these layouts."""
    if not isinstance(call, relax.Call) or not call.op.same_as(CONV2D):
        return False
    a = call.attrs
    data, weight = call.args
    out_layout = str(a.out_layout) or str(a.data_layout)
    return (
        isinstance(weight, RelaxConstant)
        and (str(a.data_layout), str(a.kernel_layout)) == layouts
        and out_layout == layouts[0]
        and str(a.out_dtype) in ("", "None", "void", "float32")
        and weight.ty.dtype == "float32"
        and data.ty.dtype == "float32"
        and static_shape(data) is not None
        and static_shape(call) is not None
    )


def count_packable(mod: IRModule, layouts: tuple[str, str]) -> int:
    return count_calls(mod, lambda expr: packable_conv2d(expr, layouts))


@module_pass(opt_level=0, name="PackConv2dFp32")
class PackConv2dFp32:
    """vector_lanes: the target's fp32 vector width (16 AVX-512, 8 AVX2, 4 NEON)."""

    def __init__(self, vector_lanes: int):
        self.vector_lanes = int(vector_lanes)

    @carries_errors
    def transform_module(self, mod: IRModule, ctx: PassContext) -> IRModule:
        lanes = self.vector_lanes
        bound = bound_values(mod)
        packed = relax.transform.Normalize()(rewrite_calls(
            mod, lambda bb, call: packed_call(bb, call, lanes, bound) if packable_conv2d(call) else None
        ))
        if any(nchw_source(v.args[0], bound) is not None for v in bound.values() if packable_conv2d(v)):
            # A transpose whose every reader now reads its input goes with the dead bindings.
            packed = relax.transform.DeadCodeElimination()(packed)
        return packed


def bound_values(mod: IRModule) -> dict:
    values = {}
    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            values.update(relax.analysis.get_var2val(func))
    return values


def nchw_source(data: relax.Expr, bound: dict) -> relax.Var | None:
    """The function parameter (a graph input: never rewritten, so safe to refer to from a
    rewritten call) of static shape that `data` is the NCHW -> NHWC transpose of; else None."""
    value = bound.get(data) if isinstance(data, relax.Var) else None
    if not (isinstance(value, relax.Call) and value.op.same_as(PERMUTE_DIMS) and value.attrs.axes is not None):
        return None
    source = value.args[0]
    if [int(v) for v in value.attrs.axes] != NCHW_TO_NHWC or not isinstance(source, relax.Var) or source in bound:
        return None
    return source if static_shape(source) is not None and len(static_shape(source)) == 4 else None


def packed_call(builder: relax.BlockBuilder, call: relax.Call, vector_lanes: int, bound: dict | None = None) -> relax.Expr:
    a = call.attrs
    data, weight = call.args
    source = nchw_source(data, bound or {}) if int(a.groups) == 1 else None
    if source is not None:
        data = source
    w = np.ascontiguousarray(weight.value.numpy(), dtype=np.float32)
    groups, out_channels = int(a.groups), w.shape[0]
    out_shape = static_shape(call)
    per_group = padded_channels(out_channels, groups, vector_lanes)
    if per_group != out_channels // groups:
        w = pad_conv2d_weight(w, groups, per_group)
    packed = pack_conv2d_weight(w, conv_lanes(w.shape[0], groups, vector_lanes))
    kernel = conv2d_nhwc_packed(
        static_shape(data), packed.shape, w.shape[0], groups, [int(v) for v in a.strides],
        [int(p) for p in a.padding], [int(v) for v in a.dilation], nchw_input=source is not None,
    )
    gv = add_kernel(builder, kernel, CONV_BLOCK)
    computed = [*out_shape[:3], w.shape[0]]
    result = relax.call_tir(gv, relax.Tuple([data, relax.const(packed)]), relax.TensorType(computed, "float32"))
    if w.shape[0] == out_channels:
        return result
    return _drop_padded_channels(builder, result, computed, groups, out_channels // groups)


def _drop_padded_channels(builder, result, computed, groups: int, per_group: int) -> relax.Expr:
    padded = computed[3] // groups
    if groups == 1:
        return relax.op.strided_slice(result, axes=[3], begin=[0], end=[per_group])
    kept = np.array([g * padded + i for g in range(groups) for i in range(per_group)], dtype="int32")
    return relax.op.take(result, relax.const(kept), axis=3, mode="clip")
