"""Structured pruning: remove output channels of conv2d/matmul layers, for real.

Given the output channels to keep per layer, every tensor that carries those channels
gets smaller: the producer's weight loses rows, bias adds and folded BatchNorm constants
lose entries, a flatten's target shape shrinks, a depthwise conv loses groups, and the
consuming conv2d/matmul loses input channels. Coupled layers (joined by a residual add)
must keep the same channels. The model then computes with smaller dense tensors, so
FLOPs and latency drop, not just the number of non-zero weights.

Which layers can be pruned, and why the others cannot, comes from
`tvmdeploy.pruning.channels.analyze_channels`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import tvm
from tvm import IRModule, relax
from tvm.ir.transform import PassContext
from tvm.relax.transform import function_pass

from ...errors import BuildError
from ..analysis.channels import BINARY, analyze_channels, constant_array, kept_indices
from ..analysis.layer_calls import is_primitive
from .carry import carries_errors


@function_pass(opt_level=0)
class PruneChannels:
    """keep: {layer name (e.g. "conv2d_1"): output channels to keep}. Layers of a coupled
    group may be named once; naming a layer that cannot be pruned is an error."""

    def __init__(self, keep: Mapping[str, Sequence[int]]):
        self.keep = {name: np.asarray(sorted(int(c) for c in channels), dtype=np.int64) for name, channels in keep.items()}

    @carries_errors
    def transform_function(self, func: relax.Function, mod: IRModule, ctx: PassContext) -> relax.Function:
        if is_primitive(func):
            return func
        if not self.keep:
            return func
        graph = analyze_channels(func)
        keep_by_group = {}
        for name, channels in self.keep.items():
            group = graph.group_of(name)
            if group is None:
                raise BuildError(f"structured pruning: no prunable layer named {name!r}")
            if group.blocked is not None:
                raise BuildError(f"structured pruning: layer {name} cannot be pruned: {group.blocked}")
            if len(channels) == 0 or channels[-1] >= group.channels or len(set(channels.tolist())) != len(channels):
                raise BuildError(f"structured pruning: invalid channels to keep for {name} ({group.channels} channels)")
            previous = keep_by_group.get(group.id)
            if previous is not None and not np.array_equal(previous, channels):
                raise BuildError(f"structured pruning: coupled layers {group.name} must keep the same channels")
            keep_by_group[group.id] = channels
        rewritten = _ChannelRewriter(graph, keep_by_group, mod).visit_expr(func)
        return rewritten


def _take(array: np.ndarray, indices: np.ndarray, axis: int) -> np.ndarray:
    return np.ascontiguousarray(np.take(array, indices, axis=axis))


@relax.expr_functor.mutator
class _ChannelRewriter(relax.PyExprMutator):
    def __init__(self, graph, keep_by_group, mod):
        super().__init__(mod)
        self.graph = graph
        self.keep = keep_by_group
        self.layer_by_var = {layer.var: layer for layer in graph.layers}
        self.binding = None

    def _kept(self, expr):
        """Kept indices along the channel axis of an original tensor, or None if whole."""
        state = self.graph.states.get(expr) if isinstance(expr, relax.Var) else None
        if state is None or not (state.groups & set(self.keep)):
            return None, None
        return state, kept_indices(state, self.keep)

    def visit_var_binding_(self, binding) -> None:
        self.binding = binding
        super().visit_var_binding_(binding)
        self.binding = None

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        if self.binding is None or not self.binding.value.same_as(call) or not isinstance(call.op, tvm.ir.Op):
            return super().visit_call_(call)
        # Not super().visit_call_: it infers the output shape from the new (smaller)
        # inputs before the constants are sliced to match. The binding re-infers it.
        args = [self.visit_expr(arg) for arg in call.args]
        new = relax.Call(call.op, args, call.attrs, call.type_args if hasattr(call, "type_args") else None)
        var = self.binding.var
        op = call.op.name
        in_state, in_kept = self._kept(call.args[0]) if call.args else (None, None)

        layer = self.layer_by_var.get(var)
        if layer is not None:
            weight = constant_array(call.args[1])
            group = self.graph.group_of(layer.name)
            if group is not None and group.id in self.keep:
                weight = _take(weight, self.keep[group.id], layer.out_axis)
            if in_kept is not None:
                weight = _take(weight, in_kept, layer.in_axis)
            args[1] = relax.const(weight)
            return relax.Call(new.op, args, new.attrs)

        if in_kept is not None and op == "relax.nn.conv2d":  # depthwise: one group per channel
            a = call.attrs
            weight = _take(constant_array(call.args[1]), in_kept, 0)
            return relax.op.nn.conv2d(
                args[0], relax.const(weight), strides=a.strides, padding=a.padding, dilation=a.dilation,
                groups=len(in_kept), data_layout=a.data_layout, kernel_layout=a.kernel_layout,
                out_layout=a.out_layout or None, out_dtype=a.out_dtype or None,
            )

        if op in BINARY:
            for i, arg in enumerate(call.args):
                state, kept = self._kept(call.args[1 - i])
                value = constant_array(arg)
                if value is None or kept is None:
                    continue
                ndim = len(var.ty.shape.values)
                axis = state.axis - (ndim - value.ndim)
                if axis >= 0 and value.shape[axis] > 1:
                    args[i] = relax.const(_take(value, kept, axis))
            return relax.Call(new.op, args, new.attrs)

        if op == "relax.reshape":
            out_state, out_kept = self._kept(var)
            if out_kept is not None:
                shape = [int(d) for d in var.ty.shape.values]
                shape[out_state.axis] = len(out_kept)
                return relax.op.reshape(args[0], shape)
        return new
