"""GuardIntegerDivision: an integer division never traps.

    divide / floor_divide / mod / floor_mod (x, d)   integers, d not a constant free of 0 and -1
    ->  the same op (x, where(d == 0 or (x == MIN and d == -1), 1, d))

The CPU's integer divide instruction raises SIGFPE on a zero divisor (and on the signed
minimum divided by -1): a model dividing by an integer input killed the process with
"Floating point exception" where ONNX Runtime returns "Integer division by zero". With the
divisor taken as 1 there, such an element comes out as x (or 0 for a remainder) and every
other element as before. Float division is left alone (it gives inf or nan).
"""

from __future__ import annotations

import numpy as np
from tvm import IRModule, relax
from tvm.ir import Op
from tvm.ir.transform import PassContext
from tvm.relax.transform import function_pass

from .._tvm import RelaxConstant
from ..analysis.layer_calls import is_primitive
from .call_rewrite import rewrite_function_calls
from .carry import carries_errors

DIVISIONS = {
    Op.get("relax.divide"): relax.op.divide,
    Op.get("relax.floor_divide"): relax.op.floor_divide,
    Op.get("relax.mod"): relax.op.mod,
    Op.get("relax.floor_mod"): relax.op.floor_mod,
}


@function_pass(opt_level=0)
class GuardIntegerDivision:
    @carries_errors
    def transform_function(self, func: relax.Function, mod: IRModule, ctx: PassContext) -> relax.Function:
        if is_primitive(func):
            return func
        return rewrite_function_calls(func, mod, lambda call: guarded_division(call) if isinstance(call.op, Op) else None)


def guarded_division(call: relax.Call) -> relax.Call | None:
    make = next((make for op, make in DIVISIONS.items() if call.op.same_as(op)), None)
    if make is None or len(call.args) != 2:
        return None
    x, d = call.args
    dtype = str(getattr(d.ty, "dtype", ""))
    if not dtype.startswith(("int", "uint")) or str(getattr(x.ty, "dtype", "")) != dtype or _safe_constant(d):
        return None
    zero, one = relax.const(np.zeros((), dtype), dtype), relax.const(np.ones((), dtype), dtype)
    traps = relax.op.equal(d, zero)
    if dtype.startswith("int"):
        lowest, minus_one = relax.const(np.array(np.iinfo(dtype).min, dtype), dtype), relax.const(np.array(-1, dtype), dtype)
        traps = relax.op.logical_or(traps, relax.op.logical_and(relax.op.equal(x, lowest), relax.op.equal(d, minus_one)))
    return make(x, relax.op.where(traps, one, d))


def _safe_constant(d: relax.Expr) -> bool:
    if not isinstance(d, RelaxConstant):
        return False
    values = d.value.numpy()
    return not (values == 0).any() and not (values == -1).any()
