"""PackDenseFp32: float32 matmul by a constant [K, N] weight -> our packed dense kernel.

    matmul(x [..., M, K], W [K, N] constant)  ->  call_tir(dense_fp32_packed, [x, pack(W)])

The weight is packed once here ([N/L, 1, 1, K, L], kernels/fp32_packed.py) and the kernel
is the packed 1x1 convolution's micro-kernel over the rows of x (RW rows x V vectors of
L output columns in registers, broadcast-FMA along K), so a dense gets the conv's
analytic default and its small tuning space rather than MetaSchedule's generic tiling
(BERT-base layer matmuls: 50-63 % of fp32 peak with the generic one). FuseOps fuses the
bias, activation and residual add after it like after a conv. Where N is not whole
vectors it is padded as a conv's output channels are (padded_channels) and a slice
drops the extra columns. A matmul of two activations (attention's), a weight computed at
run time or kept as a parameter, another dtype or a dynamic shape is left as it is.
"""

from __future__ import annotations

import numpy as np
from tvm import IRModule, relax
from tvm.ir import Op
from tvm.ir.transform import PassContext, module_pass

from .._tvm import RelaxConstant
from ..analysis.channels import static_shape
from ..kernels.fp32_packed import DENSE_BLOCK, conv_lanes, dense_packed, pack_dense_weight, padded_channels
from .call_rewrite import add_kernel, count_calls, rewrite_calls
from .carry import carries_errors

MATMUL = Op.get("relax.matmul")


def packable_dense(call: relax.Expr) -> bool:
    """A float32 matmul of static-shaped activations by a constant 2-D weight."""
    if not isinstance(call, relax.Call) or not call.op.same_as(MATMUL):
        return False
    data, weight = call.args
    shape = static_shape(data)
    return (
        isinstance(weight, RelaxConstant)
        and len(weight.ty.shape) == 2
        and weight.ty.dtype == "float32"
        and data.ty.dtype == "float32"
        and str(call.attrs.out_dtype) in ("", "None", "void", "float32")
        and shape is not None
        and len(shape) >= 2
        and static_shape(call) is not None
        and min(*shape, *weight.value.shape) > 0  # an empty tensor: nothing to compute
    )


def count_packable_dense(mod: IRModule) -> int:
    return count_calls(mod, packable_dense)


@module_pass(opt_level=0, name="PackDenseFp32")
class PackDenseFp32:
    """vector_lanes: the target's fp32 vector width (16 AVX-512, 8 AVX2, 4 NEON)."""

    def __init__(self, vector_lanes: int):
        self.vector_lanes = int(vector_lanes)

    @carries_errors
    def transform_module(self, mod: IRModule, ctx: PassContext) -> IRModule:
        lanes = self.vector_lanes
        packed = rewrite_calls(mod, lambda bb, call: packed_dense_call(bb, call, lanes) if packable_dense(call) else None)
        return relax.transform.Normalize()(packed)


def packed_dense_call(builder: relax.BlockBuilder, call: relax.Call, vector_lanes: int) -> relax.Expr:
    data, weight = call.args
    w = np.ascontiguousarray(weight.value.numpy(), dtype=np.float32)
    columns = w.shape[1]
    computed = padded_channels(columns, 1, vector_lanes)
    if computed != columns:
        w = np.concatenate([w, np.zeros((w.shape[0], computed - columns), np.float32)], axis=1)
    packed = pack_dense_weight(w, conv_lanes(computed, 1, vector_lanes))
    x_shape = static_shape(data)
    kernel = dense_packed(x_shape, packed.shape)
    gv = add_kernel(builder, kernel, DENSE_BLOCK)
    out_shape = [*x_shape[:-1], computed]
    result = relax.call_tir(gv, relax.Tuple([data, relax.const(packed)]), relax.TensorType(out_shape, "float32"))
    if computed == columns:
        return result
    return relax.op.strided_slice(result, axes=[len(out_shape) - 1], begin=[0], end=[columns])
