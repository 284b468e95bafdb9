"""ClampGatherIndices: take(x, indices computed at run time, mode="fast") -> mode="clip".

Importers emit Gather as `take(..., mode="fast")`, which reads `x[indices]` unchecked: a
token id past an embedding table's rows read whatever memory lay there (id 100 of a
100-row table: numbers of 1e7) or crashed the process (id 1e8: a segfault), where ONNX
Runtime refuses the input. Clamped, every read stays inside `x` whatever the inputs
hold; in-range indices give the same numbers. Indices known at compile time (constants,
shape arithmetic) are left fast: they are folded or checked before run time.
"""

from __future__ import annotations

from tvm import IRModule, relax
from tvm.ir import Op
from tvm.ir.transform import PassContext
from tvm.relax.transform import function_pass

from .._tvm import RelaxConstant
from ..analysis.layer_calls import is_primitive
from .carry import carries_errors

TAKE = Op.get("relax.take")


@function_pass(opt_level=0)
class ClampGatherIndices:
    @carries_errors
    def transform_function(self, func: relax.Function, mod: IRModule, ctx: PassContext) -> relax.Function:
        if is_primitive(func):
            return func

        @relax.expr_functor.mutator
        class Clamp(relax.PyExprMutator):
            def visit_call_(self, call):
                call = super().visit_call_(call)
                if not (call.op.same_as(TAKE) and str(call.attrs.mode) == "fast"):
                    return call
                data, indices = call.args
                if isinstance(indices, RelaxConstant):
                    return call
                return relax.op.take(data, indices, axis=call.attrs.axis, mode="clip")

        return Clamp(mod).visit_expr(func)
