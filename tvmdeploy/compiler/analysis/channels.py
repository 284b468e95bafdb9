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
    walk = _ChannelWalk()
    for index, binding in enumerate(bindings):
        if isinstance(binding, relax.VarBinding):
            walk.visit(index, binding.var, binding.value)
    # Whatever the function returns keeps its shape.
    ret = func.body.body
    for expr in ret.fields if isinstance(ret, relax.Tuple) else [ret]:
        walk.block(walk.state_of(expr), "its channels reach a model output")
    return walk.graph(bindings)


class _ChannelWalk:
    """One pass over main's bindings: which tensor axis carries whose channels.

    Every op kind has a handler (`_HANDLERS`, by op name) that maps its input's channel
    state to its output's, or blocks the channel groups it cannot carry (with why)."""

    def __init__(self):
        self.uf = _UnionFind()
        self.blocked: dict[int, str] = {}
        self.states: dict = {}
        self.layers: list[Layer] = []
        self.producers: dict[int, Layer] = {}  # group id (before union) -> producer
        self.consumers: list[tuple[Layer, ChannelState]] = []
        self.counts: dict = {}

    def block(self, state: ChannelState | None, reason: str) -> None:
        for g in state.groups if state is not None else ():
            self.blocked.setdefault(g, reason)

    def state_of(self, expr) -> ChannelState | None:
        return self.states.get(expr) if isinstance(expr, relax.Var) else None

    def visit(self, index: int, var, value) -> None:
        if isinstance(value, relax.Var):  # an alias (y = x)
            if value in self.states:
                self.states[var] = self.states[value]
            return
        if isinstance(value, relax.Tuple):
            for f in value.fields:
                self.block(self.state_of(f), "packed into a tuple")
            return
        if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
            for arg in value.args if isinstance(value, relax.Call) else []:
                self.block(self.state_of(arg), "passed to a function call")
            return
        layer = layer_of_call(value, index, self.counts)
        if layer is not None:
            out = self._layer(layer, var, value)
        else:
            handler = _HANDLERS.get(value.op.name, _ChannelWalk._other)
            out = handler(self, value, var)
        if out is not None:
            self.states[var] = out

    def _layer(self, layer: Layer, var, call) -> ChannelState:
        """conv2d / matmul with a constant weight: consumes channels, produces a new group."""
        args = list(call.args)
        layer.var = var
        self.layers.append(layer)
        for extra in args[2:]:
            self.block(self.state_of(extra), f"extra argument of {layer.name}")
        in_state = self.state_of(args[0])
        if in_state is not None:
            channel_axis = layer.data_axis % len(static_shape(args[0]))
            if in_state.axis == channel_axis:
                self.consumers.append((layer, in_state))
            else:
                self.block(in_state, f"{layer.name} reads a non-channel axis")
        gid = len(self.producers)
        self.producers[gid] = layer
        self.uf.add(gid)
        out_shape = static_shape(var)
        if layer.layout == "NHWC":
            self.blocked.setdefault(gid, "NHWC layout (pruning rewrites NCHW graphs)")
        return ChannelState(layer.data_axis % len(out_shape), ((gid, layer.channels, 1),))

    def _conv2d(self, call, var) -> ChannelState | None:
        in_state = self.state_of(call.args[0])
        if _is_depthwise(call) and in_state is not None and in_state.axis == 1:
            return in_state  # depthwise: channel c in -> channel c out
        if _is_depthwise(call):
            self.block(in_state, "depthwise conv on a non-channel axis")
            return None
        return self._other(call, var)

    def _unary(self, call, var) -> ChannelState | None:
        return self.state_of(call.args[0])

    def _pool(self, call, var) -> ChannelState | None:
        in_state = self.state_of(call.args[0])
        if in_state is None:
            return None
        if in_state.axis == 1 and call.attrs.layout == "NCHW" and call.attrs.out_layout in ("", "NCHW"):
            return in_state
        self.block(in_state, f"{call.op.name} in another layout")
        return None

    def _binary(self, call, var) -> ChannelState | None:
        op, (a, b) = call.op.name, call.args
        sa, sb = self.state_of(a), self.state_of(b)
        if sa is not None and sb is not None:
            return self._join(op, sa, sb)
        if sa is None and sb is None:
            return None
        labeled, other, labeled_expr = (sa, b, a) if sa is not None else (sb, a, b)
        if _broadcasts_per_channel(other, labeled_expr, labeled.axis):
            return labeled
        if isinstance(other, tvm.ir.GenericConst):
            self.block(labeled, f"{op} with a constant that is not per-channel")
        else:
            self.block(labeled, f"{op} with a tensor whose channels no prunable layer owns (a residual from the input?)")
        return None

    def _join(self, op: str, sa: ChannelState, sb: ChannelState) -> ChannelState | None:
        """Two channel-carrying tensors meet (a residual add): their groups prune together."""
        if not (sa.axis == sb.axis and _same_layout(sa, sb)):
            self.block(sa, f"{op} of tensors with different channel layouts")
            self.block(sb, f"{op} of tensors with different channel layouts")
            return None
        for (ga, _, _), (gb, _, _) in zip(sa.segments, sb.segments):
            if ga is not None and gb is not None:
                self.uf.union(ga, gb)
            elif ga is not None or gb is not None:
                self.blocked.setdefault(ga if ga is not None else gb, f"{op} with channels another layer keeps")
        return sa

    def _reshape(self, call, var) -> ChannelState | None:
        in_state = self.state_of(call.args[0])
        if in_state is None:
            return None
        out = _flatten_state(in_state, static_shape(call.args[0]), static_shape(var))
        if out is None:
            self.block(in_state, "a reshape that splits or moves the channel axis")
        return out

    def _concat(self, call, var) -> ChannelState | None:
        if not isinstance(call.args[0], relax.Tuple):
            self.block(self.state_of(call.args[0]), "concat of a tuple variable")
            return None
        fields = list(call.args[0].fields)
        field_states = [self.state_of(f) for f in fields]
        if all(s is None for s in field_states):
            return None
        ndim = len(static_shape(var))
        axis = int(call.attrs.axis)
        axis = axis + ndim if axis < 0 else axis
        if any(s is not None and s.axis != axis for s in field_states):
            for s in field_states:
                self.block(s, "concat along another axis")
            return None
        segments = []
        for f, s in zip(fields, field_states):
            segments.extend(s.segments if s is not None else ((None, static_shape(f)[axis], 1),))
        return ChannelState(axis, tuple(segments))

    def _reduce(self, call, var) -> ChannelState | None:
        in_state = self.state_of(call.args[0])
        if in_state is None:
            return None
        axes, ndim = call.attrs.axis, len(static_shape(call.args[0]))
        reduced = {int(a) + ndim if int(a) < 0 else int(a) for a in axes} if axes is not None else set(range(ndim))
        if in_state.axis not in reduced and all(a > in_state.axis for a in reduced):
            return in_state
        self.block(in_state, f"{call.op.name} over the channel axis")
        return None

    def _other(self, call, var) -> None:
        """An op no handler knows: whatever channels reach it are blocked."""
        for arg in call.args:
            for f in arg.fields if isinstance(arg, relax.Tuple) else [arg]:
                self.block(self.state_of(f), f"used by {call.op.name}")
        return None

    def graph(self, bindings) -> ChannelGraph:
        """Union-find roots -> groups, with their producers, consumers and why they are blocked."""
        uf, producers = self.uf, self.producers
        groups_by_root: dict[int, Group] = {}
        for gid in sorted(producers):
            group = groups_by_root.setdefault(uf.find(gid), Group(id=len(groups_by_root)))
            group.producers.append(producers[gid])
        for gid, reason in self.blocked.items():
            group = groups_by_root[uf.find(gid)]
            group.blocked = group.blocked or reason
        for layer, state in self.consumers:
            for root in {uf.find(g) for g in state.groups}:
                groups_by_root[root].consumers.append(Consumer(layer, state))
        for group in groups_by_root.values():
            if group.blocked is None and len({p.channels for p in group.producers}) != 1:
                group.blocked = "coupled layers with different channel counts"
            if group.blocked is None and not group.consumers:
                group.blocked = "no layer consumes its channels"
        # Canonicalize: the root id -> group mapping must survive the union-find.
        canonical = {gid: groups_by_root[uf.find(gid)].id for gid in producers}

        def relabel(s: ChannelState) -> ChannelState:
            return ChannelState(s.axis, tuple((canonical.get(g) if g is not None else None, n, r) for g, n, r in s.segments))

        states = {var: relabel(s) for var, s in self.states.items()}
        for group in groups_by_root.values():
            for consumer in group.consumers:
                consumer.state = relabel(consumer.state)
        groups = sorted(groups_by_root.values(), key=lambda g: g.id)
        return ChannelGraph(self.layers, groups, states, bindings)


_HANDLERS = {
    "relax.nn.conv2d": _ChannelWalk._conv2d,
    "relax.reshape": _ChannelWalk._reshape,
    "relax.concat": _ChannelWalk._concat,
    **{op: _ChannelWalk._unary for op in UNARY},
    **{op: _ChannelWalk._pool for op in POOL},
    **{op: _ChannelWalk._binary for op in BINARY},
    **{op: _ChannelWalk._reduce for op in REDUCE},
}


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
