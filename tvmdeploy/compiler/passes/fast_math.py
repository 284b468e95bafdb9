"""FastMath: exp / erf / tanh / softmax -> TVM's polynomial forms (topi.fast_*; a
softmax over the last axis -> kernels/softmax_rows.py, built on topi.fast_exp).

LLVM has no vector math library in TVM's CPU codegen, so exact exp/erf/tanh run as one
scalar libm call per element: a BERT layer's GELU matmul took 7 ms of 14 that way. TVM's
fast forms are polynomials that vectorize; relative error < 6e-7 over [-12, 12]
(measured), inputs clamped to about +-88 for exp (exp(-inf) gives ~1e-38, not 0).

TVM ships this as relax.transform.FastMathTransform, which fails on any call whose
callee is a function rather than an op ("'GlobalVar' object has no attribute 'name'":
every int8 model has such calls); this one rewrites only op calls and leaves fused
(primitive) functions alone.
"""

from __future__ import annotations

from tvm import IRModule, topi
from tvm.ir import Op
from tvm.ir.transform import PassContext, module_pass

from ..kernels.softmax_rows import softmax_rows
from .call_rewrite import rewrite_calls
from .carry import carries_errors

FAST = {
    "relax.exp": lambda bb, call: bb.call_te(topi.fast_exp, call.args[0]),
    "relax.erf": lambda bb, call: bb.call_te(topi.fast_erf, call.args[0]),
    "relax.tanh": lambda bb, call: bb.call_te(topi.fast_tanh, call.args[0]),
    "relax.nn.softmax": lambda bb, call: _softmax(bb, call.args[0], int(call.attrs.axis)),
}


def _softmax(bb, x, axis: int):
    if axis in (-1, len(x.ty.shape) - 1):
        return bb.call_te(softmax_rows, x, primfunc_name_hint="softmax_rows")
    return bb.call_te(topi.nn.fast_softmax, x, axis)


@module_pass(opt_level=0, name="FastMath")
class FastMath:
    @carries_errors
    def transform_module(self, mod: IRModule, ctx: PassContext) -> IRModule:
        return rewrite_calls(mod, _fast_form)


def _fast_form(bb, call):
    fast = FAST.get(call.op.name) if isinstance(call.op, Op) else None
    if fast is None or call.args[0].ty.dtype != "float32":
        return None
    return fast(bb, call)
