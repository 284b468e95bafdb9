"""SinkChannelTake: a gather of channels moves past the per-channel ops that follow it,
and two gathers in a row become one.

On CPU targets two passes gather channels by a constant index on the last (NHWC channel)
axis: PackConv2dFp32 drops the channels a grouped conv padded to whole vectors, and
ChannelShuffleNHWC shuffles them. In light ShuffleNet every unit then ran

    conv(padded) -> take(drop) -> add(bias) -> relu -> take(shuffle) -> depthwise conv

four kernels where two do: the bias and the activation act per channel, so they can
act before the gather (on the padded channels, inside the conv's kernel), and the two
gathers compose into one:

    relu(take(x, i))            ->  take(relu(x), i)              (also clip)
    add(take(x, i), c)          ->  take(add(x, c'), i)           c'[i[k]] = c[k], c per channel
    take(take(x, a), b)         ->  take(x, a[b])
    take(x, 0..C-1)             ->  x

Only gathers whose indices are distinct (a bias must land on one channel) and whose
result feeds this op alone (else the op would run twice) are moved.

The gathers that remain are legalized as injective kernels (`legalize_channel_gather`):
TVM's pattern analysis calls a table-indexed read opaque, so FuseOps kept each gather a
kernel of its own, writing a tensor the next kernel read back (ShuffleNet's drop before
its residual add). An injective gather fuses into the elementwise and injective ops after
it.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import IRModule, relax
from tvm.ir.transform import PassContext
from tvm.relax.dpl import is_const, is_op, wildcard
from tvm.relax.transform import function_pass

from .._tvm import OP_PATTERN_INJECTIVE, topi
from ..analysis.channels import constant_array, static_shape
from ..analysis.layer_calls import is_primitive
from ..analysis.uses import UseCounts, rewrite_to_fixed_point
from .carry import carries_errors

_PER_CHANNEL_UNARY = ("relax.nn.relu", "relax.clip")
_PER_CHANNEL_BINARY = ("relax.add", "relax.multiply")


def channel_gather(call: relax.Expr) -> np.ndarray | None:
    """The index array of a take along the last axis by a 1-D constant within range
    (None: another call)."""
    if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op) or call.op.name != "relax.take":
        return None
    shape, index = static_shape(call.args[0]), constant_array(call.args[1])
    if shape is None or index is None or index.ndim != 1 or index.dtype.kind not in "iu":
        return None
    axis = call.attrs.axis
    if axis is None or int(axis) not in (len(shape) - 1, -1):
        return None
    if len(index) == 0 or index.min() < 0 or index.max() >= shape[-1]:
        return None
    return index.astype(np.int64)


def per_channel(value: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """The length-`channels` vector a constant amounts to when broadcast along the last
    axis of a rank-`rank` tensor (None: it varies along another axis)."""
    if value.ndim > rank or any(d != 1 for d in value.shape[:-1]) or (value.ndim and value.shape[-1] not in (1, channels)):
        return None
    return np.broadcast_to(value.reshape(-1) if value.ndim else value, (channels,))


def legalize_channel_gather(bb, call: relax.Call) -> relax.Expr:
    """LegalizeOps' rule for relax.take: TVM's own kernel (topi.take), marked injective
    when it gathers channels by a constant index (see the module docstring)."""
    attrs = {"primfunc_attrs": {"op_pattern": OP_PATTERN_INJECTIVE}} if channel_gather(call) is not None else {}
    return bb.call_te(topi.take, call.args[0], call.args[1], call.attrs.axis, mode=call.attrs.mode, **attrs)


@function_pass(opt_level=0)
class SinkChannelTake:
    def __init__(self, max_iterations: int = 32):
        self.max_iterations = max_iterations
        self.data, self.index = wildcard(), is_const()
        self.take = is_op("relax.take")(self.data, self.index)
        self.const = is_const()
        pattern = is_op("relax.take")(self.take, is_const())
        for op in _PER_CHANNEL_UNARY:
            pattern = pattern | is_op(op)(self.take)
        for op in _PER_CHANNEL_BINARY:
            pattern = pattern | is_op(op)(self.take, self.const) | is_op(op)(self.const, self.take)
        self.pattern = pattern | is_op("relax.take")(wildcard(), is_const())

    @carries_errors
    def transform_function(self, func: relax.Function, mod: IRModule, ctx: PassContext) -> relax.Function:
        if is_primitive(func):
            return func
        return rewrite_to_fixed_point(self.pattern, self._rewrite, func, self.max_iterations)

    def _rewrite(self, expr: relax.Expr, matches, uses: UseCounts) -> relax.Expr:
        if not isinstance(expr, relax.Call):
            return expr  # a value an earlier rewrite in this pass already replaced by a variable
        if expr.op.name == "relax.take" and self.take not in matches:
            index = channel_gather(expr)  # a lone take: the identity?
            shape = static_shape(expr.args[0])
            if index is not None and len(index) == shape[-1] and np.array_equal(index, np.arange(shape[-1])):
                return expr.args[0]
            return expr
        take = matches[self.take]
        index = channel_gather(take)
        if index is None or uses.of(take) != 1:
            return expr
        data = matches[self.data]
        if expr.op.name == "relax.take":
            outer = channel_gather(expr)
            if outer is None:
                return expr
            return relax.op.take(data, relax.const(index[outer].astype(np.int32)), axis=take.attrs.axis, mode="clip")
        if expr.op.name in _PER_CHANNEL_UNARY:
            moved = relax.Call(expr.op, [data, *expr.args[1:]], expr.attrs)
            return relax.op.take(moved, take.args[1], axis=take.attrs.axis, mode="clip")
        return self._sink_binary(expr, take, data, index, matches[self.const])

    @staticmethod
    def _sink_binary(expr, take, data, index, const) -> relax.Expr:
        shape, value = static_shape(data), constant_array(const)
        out = static_shape(expr)
        if shape is None or value is None or out is None or out != static_shape(take) or len(np.unique(index)) != len(index):
            return expr  # the constant would broadcast the result to another shape, or a channel is read twice
        vector = per_channel(value, len(index), len(shape))
        if vector is None:
            return expr
        spread = np.zeros(shape[-1], dtype=value.dtype)
        spread[index] = vector
        operand = relax.const(spread.reshape((1,) * (len(shape) - 1) + (shape[-1],)))
        args = [operand, data] if constant_array(expr.args[0]) is not None else [data, operand]
        moved = relax.Call(expr.op, args, expr.attrs)
        return relax.op.take(moved, take.args[1], axis=take.attrs.axis, mode="clip")
