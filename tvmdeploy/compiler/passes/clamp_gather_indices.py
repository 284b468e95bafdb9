"""ClampGatherIndices: gathers and scatters by indices computed at run time never reach
outside their tensor.

    take(x, i, mode="fast")            ->  take(x, i, mode="clip")
    gather_elements(x, i, axis)        ->  gather_elements(x, inside(i, x.shape[axis]), axis)
    scatter_elements(x, i, u, axis)    ->  scatter_elements(x, inside(i, x.shape[axis]), u, axis)
    gather_nd(x, i) / scatter_nd(x, i, u)  ->  the same with each column k of i inside x.shape[k]

    inside(i, n) = min(max(where(i < 0, i + n, i), 0), n - 1)   (ONNX counts negatives from the end)

TVM reads and writes at these indices unchecked: a token id past an embedding table's
rows read whatever memory lay there (id 100 of a 100-row table: numbers of 1e7) or crashed
the process (id 1e8: a segfault; GatherElements and GatherND alike), where ONNX Runtime
refuses the input. Clamped, every access stays inside the tensor whatever the inputs hold;
in-range indices give the same numbers (the loader refuses out-of-range ids of a model's
inputs before they get here: analysis/gather_indices.py). Indices known at compile time
(constants, shape arithmetic) are left as they are: they are folded or checked before.
"""

from __future__ import annotations

import numpy as np
from tvm import IRModule, relax
from tvm.ir import Op
from tvm.ir.transform import PassContext
from tvm.relax.transform import function_pass

from .._tvm import RelaxConstant
from ..analysis.channels import static_shape
from ..analysis.layer_calls import is_primitive
from .call_rewrite import rewrite_function_calls
from .carry import carries_errors

TAKE = Op.get("relax.take")
ALONG_AXIS = {Op.get("relax.gather_elements"): relax.op.gather_elements, Op.get("relax.scatter_elements"): relax.op.scatter_elements}
BY_COLUMNS = {Op.get("relax.gather_nd"): relax.op.gather_nd, Op.get("relax.scatter_nd"): relax.op.scatter_nd}


@function_pass(opt_level=0)
class ClampGatherIndices:
    @carries_errors
    def transform_function(self, func: relax.Function, mod: IRModule, ctx: PassContext) -> relax.Function:
        if is_primitive(func):
            return func
        return rewrite_function_calls(func, mod, lambda call: clamped_call(call) if isinstance(call.op, Op) and len(call.args) >= 2 else None)


def clamped_call(call: relax.Call) -> relax.Call | None:
    """The call with its run-time indices kept inside the tensor (None: nothing to do)."""
    data, indices = call.args[0], call.args[1]
    if isinstance(indices, RelaxConstant):
        return None
    if call.op.same_as(TAKE):
        return relax.op.take(data, indices, axis=call.attrs.axis, mode="clip") if str(call.attrs.mode) == "fast" else None
    shape = static_shape(data)
    index_shape = static_shape(indices)
    if shape is None or index_shape is None:
        return None
    for op, make in ALONG_AXIS.items():
        if call.op.same_as(op):
            axis = int(call.attrs.axis) % len(shape)
            return make(data, _inside(indices, np.int64(shape[axis])), *call.args[2:], **_attrs(call, axis=axis))
    for op, make in BY_COLUMNS.items():
        if call.op.same_as(op):
            first = int(call.attrs.batch_dims) if hasattr(call.attrs, "batch_dims") else 0
            sizes = np.array(shape[first : first + index_shape[-1]], np.int64)
            return make(data, _inside(indices, sizes), *call.args[2:], **_attrs(call))
    return None


def _attrs(call: relax.Call, **given) -> dict:
    names = ("axis", "batch_dims", "reduction")
    found = {n: getattr(call.attrs, n) for n in names if hasattr(call.attrs, n)}
    found = {n: (str(v) if n == "reduction" else int(v)) for n, v in found.items()}
    return {**found, **given}


def _inside(indices: relax.Expr, sizes: np.ndarray) -> relax.Expr:
    dtype = str(indices.ty.dtype)
    n = relax.const(sizes.astype(dtype), dtype)
    zero = relax.const(np.zeros((), dtype), dtype)
    wrapped = relax.op.where(relax.op.less(indices, zero), relax.op.add(indices, n), indices)
    return relax.op.minimum(relax.op.maximum(wrapped, zero), relax.op.subtract(n, relax.const(np.ones((), dtype), dtype)))
