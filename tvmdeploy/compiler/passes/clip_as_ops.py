"""ClipAsRelaxOps: the ONNX importer's Clip kernels back into Relax maximum/minimum.

TVM's ONNX importer turns Clip (ReLU6 in every MobileNet) into call_tir of TE kernels
(`T_maximum` / `T_minimum` against a scalar bound), which graph passes cannot see into:
ConvertLayout wrapped every ReLU6 in two transposes back to NCHW (a MobileNetV2 spent a
quarter of its time there). As Relax ops they follow the layout and fuse into the conv.

    call_tir(maximum, (x, bound))  ->  relax.op.maximum(x, bound)     (same for minimum)

Only kernels that are exactly one elementwise max/min of x and a scalar constant are
rewritten; the bound stays the same constant.
"""

from __future__ import annotations

from tvm import IRModule, relax
from tvm.ir import Op
from tvm.ir.transform import PassContext
from tvm.relax.transform import function_pass

from .._tvm import PrimFunc, RelaxConstant
from ..analysis.layer_calls import is_primitive
from .call_rewrite import rewrite_function_calls
from .carry import carries_errors

CALL_TIR = Op.get("relax.call_tir")
OPS = {"T_maximum": relax.op.maximum, "T_minimum": relax.op.minimum}


def clip_op(kernel) -> "callable | None":
    """relax.op.maximum / minimum when the kernel is exactly one such TE block."""
    if not isinstance(kernel, PrimFunc) or len(kernel.params) != 3:
        return None
    script = kernel.script(show_meta=False)
    blocks = [line.strip() for line in script.splitlines() if "T.sblock(" in line and "\"root\"" not in line]
    if len(blocks) != 1:
        return None
    return next((op for name, op in OPS.items() if f'T.sblock("{name}")' in blocks[0]), None)


def _callee(mod: IRModule, gv):
    return next((f for g, f in mod.functions_items() if g.same_as(gv)), None)


@function_pass(opt_level=0)
class ClipAsRelaxOps:
    @carries_errors
    def transform_function(self, func: relax.Function, mod: IRModule, ctx: PassContext) -> relax.Function:
        if is_primitive(func):
            return func
        return rewrite_function_calls(func, mod, lambda call: _as_op(mod, call))


def _as_op(mod: IRModule, call: relax.Call) -> relax.Expr | None:
    if not call.op.same_as(CALL_TIR) or not isinstance(call.args[1], relax.Tuple):
        return None
    args = list(call.args[1].fields)
    if len(args) != 2 or not isinstance(args[1], RelaxConstant) or args[1].value.numpy().size != 1:
        return None
    op = clip_op(_callee(mod, call.args[0]))
    if op is None or args[0].ty.dtype != args[1].ty.dtype:
        return None
    return op(args[0], args[1])
