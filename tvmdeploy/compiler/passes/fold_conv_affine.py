"""Fold per-output-channel scales and shifts that follow a conv2d into the conv itself.

TVM's FoldBatchnormToConv2D only matches conv2d -> batch_norm. Real exports often have a
biased conv (conv2d -> add(bias) -> batch_norm), and once DecomposeOpsForInference has
turned the BatchNorm into subtract/divide/multiply/add with constants, nothing folds it:
four elementwise ops stay in every convolution kernel. This pass folds any chain of
add/subtract/multiply/divide by constants that broadcast along the output channels:

    conv2d(x, W) [+ b]  op1 c1  op2 c2 ...   ==>   conv2d(x, W * s) + t

with s and t computed at compile time. A conv (or its bias add) that has other users is
left alone, so no convolution is ever computed twice.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import IRModule, relax
from tvm.ir.transform import PassContext
from tvm.relax.dpl import is_const, is_op, wildcard
from tvm.relax.transform import function_pass

from ..analysis.uses import UseCounts, rewrite_to_fixed_point
from .carry import carries_errors

_FOLDABLE = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide")


@function_pass(opt_level=0)
class FoldConvChannelAffine:
    """conv2d(x, const W) [+ const b] followed by per-channel affine ops -> one conv + one add."""

    def __init__(self, max_iterations: int = 16):
        self.max_iterations = max_iterations
        self.data = wildcard()
        self.weight = is_const()
        self.conv = is_op("relax.nn.conv2d")(self.data, self.weight)
        self.bias = is_const()
        self.conv_bias = is_op("relax.add")(self.conv, self.bias)
        producer = self.conv_bias | self.conv
        constant = is_const()
        self.pattern = None
        for op in _FOLDABLE:
            alternative = is_op(op)(producer, constant)
            if op in ("relax.add", "relax.multiply"):  # commutative: const on either side
                alternative = alternative | is_op(op)(constant, producer)
            self.pattern = alternative if self.pattern is None else self.pattern | alternative

    @carries_errors
    def transform_function(self, func: relax.Function, mod: IRModule, ctx: PassContext) -> relax.Function:
        if "Primitive" in func.attrs.keys() and func.attrs["Primitive"] != 0:
            return func
        return rewrite_to_fixed_point(self.pattern, self._rewrite, func, self.max_iterations)

    def _rewrite(self, expr: relax.Call, matches, uses: UseCounts) -> relax.Expr:
        conv = matches[self.conv]
        attrs = conv.attrs
        if (attrs.data_layout, attrs.kernel_layout) != ("NCHW", "OIHW") or attrs.out_layout not in ("", "NCHW"):
            return expr
        bias_add = matches.get(self.conv_bias)
        if bias_add is None and expr.op.name == "relax.add":
            return expr  # conv2d + bias is already the folded form
        # The matched producer must feed only this op, or the conv would run twice.
        if uses.of(conv) != 1 or (bias_add is not None and uses.of(bias_add) != 1):
            return expr
        weight = matches[self.weight].value.numpy()
        if weight.dtype.kind != "f":
            return expr
        channels = weight.shape[0]
        shift = None  # per-channel bias after the conv; None: no bias add at all
        if bias_add is not None:
            shift = _per_channel(matches[self.bias].value.numpy(), channels)
            if shift is None:
                return expr
        const_is_first = isinstance(expr.args[0], tvm.ir.GenericConst)  # relax.Constant before 0.27
        vector = _per_channel(expr.args[0 if const_is_first else 1].value.numpy(), channels)
        if vector is None or vector.dtype != weight.dtype:
            return expr
        op = expr.op.name
        if op in ("relax.subtract", "relax.divide") and const_is_first:
            return expr  # c - y and c / y are not affine in y's channel scale
        if op == "relax.add":
            shift = vector if shift is None else shift + vector
        elif op == "relax.subtract":
            shift = -vector if shift is None else shift - vector
        elif op == "relax.multiply":
            weight = weight * vector[:, None, None, None]
            shift = None if shift is None else shift * vector
        else:  # divide
            weight = weight / vector[:, None, None, None]
            shift = None if shift is None else shift / vector
        folded = relax.Call(conv.op, [matches[self.data], relax.const(weight.astype(weight.dtype))], attrs)
        if shift is None:
            return folded
        return relax.op.add(folded, relax.const(shift.astype(weight.dtype).reshape(1, channels, 1, 1)))


def _per_channel(value: np.ndarray, channels: int) -> np.ndarray | None:
    """The length-`channels` vector a constant amounts to when broadcast against an NCHW
    conv output, or None if it varies along any other axis."""
    if value.ndim > 4:
        return None
    shape = (1,) * (4 - value.ndim) + value.shape
    if shape[0] != 1 or shape[2] != 1 or shape[3] != 1 or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(shape[1]), (channels,)).copy()
