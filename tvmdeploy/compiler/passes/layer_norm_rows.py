"""LayerNormRows: a float32 LayerNorm over the last axis -> the row kernel
(kernels/layer_norm_rows.py), on CPU targets.

    layer_norm(x, gamma, beta, axes=[-1], eps)  ->  call_tir(layer_norm_rows, [x, gamma, beta])

LayerNorms over other axes, without scale or center, or in other dtypes are left to
TVM's legalization.
"""

from __future__ import annotations

from tvm import IRModule, relax
from tvm.ir import Op
from tvm.ir.transform import PassContext, module_pass

from ..analysis.channels import static_shape
from ..kernels.layer_norm_rows import BLOCK_NAME, layer_norm_rows
from .call_rewrite import rewrite_calls
from .carry import carries_errors

LAYER_NORM = Op.get("relax.nn.layer_norm")


def row_layer_norm(call) -> bool:
    if not isinstance(call, relax.Call) or not call.op.same_as(LAYER_NORM):
        return False
    data, gamma, beta = call.args
    shape = static_shape(data)
    a = call.attrs
    return (
        shape is not None
        and len(shape) >= 1
        and [int(x) % len(shape) for x in a.axes] == [len(shape) - 1]
        and bool(a.center) and bool(a.scale)
        and all(t.ty.dtype == "float32" for t in (data, gamma, beta))
        and static_shape(gamma) == (shape[-1],) == static_shape(beta)
    )


@module_pass(opt_level=0, name="LayerNormRows")
class LayerNormRows:
    @carries_errors
    def transform_module(self, mod: IRModule, ctx: PassContext) -> IRModule:
        return rewrite_calls(mod, _row_kernel)


def _row_kernel(bb, call):
    if not row_layer_norm(call):
        return None
    data, gamma, beta = call.args
    return bb.call_te(layer_norm_rows, data, gamma, beta, float(call.attrs.epsilon), primfunc_name_hint=BLOCK_NAME)
