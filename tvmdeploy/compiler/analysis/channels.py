"""Which output channels of which layers can be removed, and what else changes with them.

Structured pruning removes whole output channels of a conv2d (or output features of a
matmul) with a constant weight: a *producer*. Its output travels through ops that keep
the channel axis (bias add, folded BatchNorm, activations, pooling, flatten, concat,
depthwise conv) until it reaches *consumers* (the next conv2d / matmul), whose input
channels shrink with it. A residual add joins two producers' channels: they must keep
the same channels, so they form one *group*. Anything else that sees the channels
(a model output, a softmax/LayerNorm over them, a reshape that splits them) makes the
group unprunable, and the reason is reported.

`analyze_channels` walks the Relax function once and returns, per group, its producers,
consumers and the reason it is blocked (if any), plus the channel layout of every tensor
on the way, which `PruneChannels` (the rewrite) and the masked evaluator both use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

# A tensor's channel axis is a concatenation of segments: (group id or None for
# channels no producer prunes, channel count, features per channel). A flatten of
# [N, C, H, W] to [N, C*H*W] turns (g, C, 1) into (g, C, H*W).
Segment = tuple  # (int | None, int, int)

UNARY = {
    "relax.nn.relu", "relax.nn.gelu", "relax.nn.gelu_tanh", "relax.nn.silu", "relax.sigmoid",
    "relax.tanh", "relax.clip", "relax.nn.leakyrelu", "relax.exp", "relax.negative", "relax.abs",
    "relax.sqrt", "relax.square", "relax.nn.dropout", "relax.erf",
}
BINARY = {"relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum", "relax.minimum"}
POOL = {"relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d"}
REDUCE = {"relax.mean", "relax.sum", "relax.max"}


@dataclass(frozen=True)
class ChannelState:
    """The channel axis of a tensor and the segments it is made of."""

    axis: int
    segments: tuple[Segment, ...]

    @property
    def groups(self) -> set[int]:
        return {g for g, _, _ in self.segments if g is not None}


@dataclass
class Layer:
    """A conv2d or matmul whose weight is a constant. `slot` names the weight:
    (index of the binding in the function, argument index)."""

    name: str
    op: str  # "conv2d" | "matmul"
    var: relax.Var
    slot: tuple[int, int]
    weight_shape: tuple[int, ...]
    out_axis: int  # the output-channel axis of the weight
    in_axis: int  # the input-channel axis of the weight

    layout: str = "NCHW"  # conv2d: the data layout (NCHW, or NHWC after int8's layout change)

    @property
    def channels(self) -> int:
        return self.weight_shape[self.out_axis]

    @property
    def data_axis(self) -> int:
        """The channel axis of the layer's input and output (-1: the last)."""
        return 1 if self.op == "conv2d" and self.layout == "NCHW" else -1


@dataclass
class Consumer:
    """A weight whose input channels follow a group: slice/zero along `axis`."""

    layer: Layer
    state: ChannelState  # of the consumed tensor (its segments map onto `axis`)


@dataclass
class Group:
    id: int
    producers: list[Layer] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)
    blocked: str | None = None

    @property
    def channels(self) -> int:
        return self.producers[0].channels

    @property
    def name(self) -> str:
        return "+".join(p.name for p in self.producers)


@dataclass
class ChannelGraph:
    layers: list[Layer]
    groups: list[Group]  # prunable and blocked alike, in program order
    states: dict  # relax.Var -> ChannelState (tensors whose channels some producer owns)
    bindings: list  # relax.VarBinding in program order (slot indices refer to these)

    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.blocked is None]

    def group_of(self, layer_name: str) -> Group | None:
        return next((g for g in self.groups if any(p.name == layer_name for p in g.producers)), None)


def main_function(mod) -> relax.Function:
    return mod if isinstance(mod, relax.Function) else mod["main"]


def bindings_of(func: relax.Function) -> list:
    out = []
    for block in func.body.blocks:
        out.extend(block.bindings)
    return out


def constant_array(expr) -> np.ndarray | None:
    return expr.value.numpy() if isinstance(expr, tvm.ir.GenericConst) else None


def static_shape(expr) -> tuple[int, ...] | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    try:
        return tuple(int(d) for d in ty.shape.values)
    except (TypeError, AttributeError):
        return None


class _UnionFind:
    def __init__(self):
        self.parent: dict[int, int] = {}

    def add(self, x: int) -> None:
        self.parent.setdefault(x, x)

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def layer_of_call(call, index: int, counts: dict) -> Layer | None:
    """The conv2d (groups=1, NCHW/OIHW or NHWC/OHWI) or 2-D-weight matmul with a constant weight."""
    if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
        return None
    name = call.op.name
    if name == "relax.nn.conv2d":
        weight = call.args[1]
        attrs = call.attrs
        layouts = {("NCHW", "OIHW"): (0, 1), ("NHWC", "OHWI"): (0, 3)}
        axes = layouts.get((attrs.data_layout, attrs.kernel_layout))
        if not isinstance(weight, tvm.ir.GenericConst) or axes is None:
            return None
        if attrs.out_layout not in ("", attrs.data_layout) or int(attrs.groups) != 1:
            return None
        kind, (out_axis, in_axis), layout = "conv2d", axes, attrs.data_layout
    elif name == "relax.matmul":
        weight = call.args[1]
        if not isinstance(weight, tvm.ir.GenericConst) or len(static_shape(weight) or ()) != 2:
            return None
        kind, out_axis, in_axis, layout = "matmul", 1, 0, ""
    else:
        return None
    counts[kind] = counts.get(kind, 0) + 1
    return Layer(f"{kind}_{counts[kind] - 1}", kind, None, (index, 1), static_shape(weight), out_axis, in_axis, layout)


def _is_depthwise(call) -> bool:
    if call.op.name != "relax.nn.conv2d" or not isinstance(call.args[1], tvm.ir.GenericConst):
        return False
    attrs = call.attrs
    w = static_shape(call.args[1])
    x = static_shape(call.args[0])
    return (
        (attrs.data_layout, attrs.kernel_layout) == ("NCHW", "OIHW")
        and x is not None and int(attrs.groups) == x[1] == w[0] and w[1] == 1
    )


def analyze_channels(mod) -> ChannelGraph:
    """mod: an IRModule (its main function) or a Relax function."""
    func = main_function(mod)
    bindings = bindings_of(func)
    uf = _UnionFind()
    blocked: dict[int, str] = {}
    states: dict = {}
    layers: list[Layer] = []
    producers: dict[int, Layer] = {}  # group id (before union) -> producer
    consumers: list[tuple[Layer, ChannelState]] = []
    counts: dict = {}

    def block(state: ChannelState | None, reason: str) -> None:
        if state is None:
            return
        for g in state.groups:
            blocked.setdefault(g, reason)

    def state_of(expr) -> ChannelState | None:
        return states.get(expr) if isinstance(expr, relax.Var) else None

    for index, binding in enumerate(bindings):
        value, var = binding.value, binding.var
        if not isinstance(binding, relax.VarBinding):
            continue
        if isinstance(value, relax.Var):  # an alias (y = x)
            if value in states:
                states[var] = states[value]
            continue
        if isinstance(value, relax.Tuple):
            for f in value.fields:
                block(state_of(f), "packed into a tuple")
            continue
        if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
            for arg in getattr(value, "args", []) if isinstance(value, relax.Call) else []:
                block(state_of(arg), "passed to a function call")
            continue
        op = value.op.name
        args = list(value.args)
        in_state = state_of(args[0]) if args else None
        out_shape = static_shape(var)
        layer = layer_of_call(value, index, counts)
        out: ChannelState | None = None

        if layer is not None:
            layer.var = var
            layers.append(layer)
            for extra in args[2:]:
                block(state_of(extra), f"extra argument of {layer.name}")
            if in_state is not None:
                ndim = len(static_shape(args[0]))
                channel_axis = layer.data_axis % ndim
                if in_state.axis == channel_axis:
                    consumers.append((layer, in_state))
                else:
                    block(in_state, f"{layer.name} reads a non-channel axis")
            gid = len(producers)
            producers[gid] = layer
            uf.add(gid)
            out_axis = layer.data_axis % len(out_shape)
            out = ChannelState(out_axis, ((gid, layer.channels, 1),))
            if layer.layout == "NHWC":
                blocked.setdefault(gid, "NHWC layout (pruning rewrites NCHW graphs)")
        elif op == "relax.nn.conv2d" and _is_depthwise(value):
            if in_state is not None and in_state.axis == 1:
                out = in_state  # channel c in -> channel c out
            else:
                block(in_state, "depthwise conv on a non-channel axis")
        elif op in UNARY:
            out = in_state
        elif op in POOL:
            if in_state is not None:
                if in_state.axis == 1 and value.attrs.layout == "NCHW" and value.attrs.out_layout in ("", "NCHW"):
                    out = in_state
                else:
                    block(in_state, f"{op} in another layout")
        elif op in BINARY:
            a, b = args
            sa, sb = state_of(a), state_of(b)
            if sa is not None and sb is not None:
                if sa.axis == sb.axis and _same_layout(sa, sb):
                    for (ga, _, _), (gb, _, _) in zip(sa.segments, sb.segments):
                        if ga is not None and gb is not None:
                            uf.union(ga, gb)
                        elif ga is not None or gb is not None:
                            blocked.setdefault(ga if ga is not None else gb, f"{op} with channels another layer keeps")
                    out = sa
                else:
                    block(sa, f"{op} of tensors with different channel layouts")
                    block(sb, f"{op} of tensors with different channel layouts")
            elif sa is not None or sb is not None:
                labeled, other = (sa, b) if sa is not None else (sb, a)
                labeled_expr = a if sa is not None else b
                if _broadcasts_per_channel(other, labeled_expr, labeled.axis):
                    out = labeled
                elif isinstance(other, tvm.ir.GenericConst):
                    block(labeled, f"{op} with a constant that is not per-channel")
                else:
                    block(labeled, f"{op} with a tensor whose channels no prunable layer owns (a residual from the input?)")
        elif op == "relax.reshape" and in_state is not None:
            out = _flatten_state(in_state, static_shape(args[0]), out_shape)
            if out is None:
                block(in_state, "a reshape that splits or moves the channel axis")
        elif op == "relax.concat":
            fields = list(args[0].fields) if isinstance(args[0], relax.Tuple) else None
            if fields is None:
                block(in_state, "concat of a tuple variable")
            else:
                field_states = [state_of(f) for f in fields]
                if any(s is not None for s in field_states):
                    axis = int(value.attrs.axis)
                    ndim = len(out_shape)
                    axis = axis + ndim if axis < 0 else axis
                    if all(s is None or s.axis == axis for s in field_states):
                        segments = []
                        for f, s in zip(fields, field_states):
                            segments.extend(s.segments if s is not None else ((None, static_shape(f)[axis], 1),))
                        out = ChannelState(axis, tuple(segments))
                    else:
                        for s in field_states:
                            block(s, "concat along another axis")
        elif op in REDUCE and in_state is not None:
            axes = value.attrs.axis
            ndim = len(static_shape(args[0]))
            reduced = {int(a) + ndim if int(a) < 0 else int(a) for a in axes} if axes is not None else set(range(ndim))
            if in_state.axis not in reduced and all(a > in_state.axis for a in reduced):
                out = in_state
            else:
                block(in_state, f"{op} over the channel axis")
        else:
            for arg in args:
                if isinstance(arg, relax.Tuple):
                    for f in arg.fields:
                        block(state_of(f), f"used by {op}")
                else:
                    block(state_of(arg), f"used by {op}")
        if out is not None:
            states[var] = out

    # Whatever the function returns keeps its shape.
    ret = func.body.body
    for expr in ret.fields if isinstance(ret, relax.Tuple) else [ret]:
        block(state_of(expr), "its channels reach a model output")

    groups_by_root: dict[int, Group] = {}
    for gid in sorted(producers):
        root = uf.find(gid)
        group = groups_by_root.setdefault(root, Group(id=len(groups_by_root)))
        group.producers.append(producers[gid])
    for gid, reason in blocked.items():
        group = groups_by_root[uf.find(gid)]
        group.blocked = group.blocked or reason
    for layer, state in consumers:
        for root in {uf.find(g) for g in state.groups}:
            groups_by_root[root].consumers.append(Consumer(layer, state))
    for group in groups_by_root.values():
        if group.blocked is None and len({p.channels for p in group.producers}) != 1:
            group.blocked = "coupled layers with different channel counts"
        if group.blocked is None and not group.consumers:
            group.blocked = "no layer consumes its channels"
    # Canonicalize: the root id -> group mapping must survive the union-find.
    canonical = {gid: groups_by_root[uf.find(gid)].id for gid in producers}
    states = {
        var: ChannelState(s.axis, tuple((canonical.get(g) if g is not None else None, n, r) for g, n, r in s.segments))
        for var, s in states.items()
    }
    for group in groups_by_root.values():
        for consumer in group.consumers:
            consumer.state = ChannelState(
                consumer.state.axis,
                tuple((canonical.get(g) if g is not None else None, n, r) for g, n, r in consumer.state.segments),
            )
    groups = sorted(groups_by_root.values(), key=lambda g: g.id)
    return ChannelGraph(layers, groups, states, bindings)


def _same_layout(a: ChannelState, b: ChannelState) -> bool:
    return len(a.segments) == len(b.segments) and all(
        (n1, r1) == (n2, r2) for (_, n1, r1), (_, n2, r2) in zip(a.segments, b.segments)
    )


def _broadcasts_per_channel(expr, labeled_expr, axis: int) -> bool:
    """A constant (or other tensor) that is 1 on every axis but the channel axis."""
    shape = static_shape(expr)
    full = static_shape(labeled_expr)
    if shape is None or full is None or len(shape) > len(full):
        return False
    aligned = (1,) * (len(full) - len(shape)) + shape
    return all(d == 1 for i, d in enumerate(aligned) if i != axis) and (
        isinstance(expr, tvm.ir.GenericConst) or aligned[axis] == 1
    )


def _flatten_state(state: ChannelState, before, after) -> ChannelState | None:
    """A reshape that merges the channel axis with every axis after it, leaving the axes
    before it alone (flatten of NCHW to [N, C*H*W])."""
    if before is None or after is None:
        return None
    axis = state.axis
    if tuple(before[:axis]) != tuple(after[:axis]):
        return None
    if len(after) == axis + 1 and after[axis] == int(np.prod(before[axis:])):
        rest = int(np.prod(before[axis + 1:]))
        return ChannelState(axis, tuple((g, n, r * rest) for g, n, r in state.segments))
    if tuple(before) == tuple(after):
        return state
    return None


def kept_indices(state: ChannelState, keep: dict[int, np.ndarray]) -> np.ndarray:
    """Indices along the tensor's channel axis that survive, given kept channels per group."""
    out, offset = [], 0
    for g, n, r in state.segments:
        channels = keep.get(g) if g is not None else None
        if channels is None:
            out.append(np.arange(offset, offset + n * r))
        else:
            out.append(offset + (np.asarray(channels)[:, None] * r + np.arange(r)[None, :]).reshape(-1))
        offset += n * r
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
