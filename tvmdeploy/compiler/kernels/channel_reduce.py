"""Reductions that keep the innermost (channel) axis, on CPUs: pooling and spatial means
in NHWC (max/avg pool, global average pool), vectorized over the channels.

    loops    (outer output axes, channel vectors) parallel -> reduction window -> channel lanes

MetaSchedule's default sample keeps the reduction innermost, so every output element
reduced its window in scalar code, strided by the channel count: on a 2-core Xeon a
3x3/2 max pool over 112x112x64 took 400 us (154 us here), a global mean over 13x13x1000
(SqueezeNet) 77 us (14 us), over 112x112x64 3.5 ms (0.23 ms).

Taken by kernels with one reduction block that reads one tensor (not a matmul or a
convolution: those have their own tiles) and writes the reduced axes' complement with
the channel axis innermost; producers (padding) are inlined, elementwise epilogues (the
average's division, a fused activation) computed per channel vector. The schedule is the
kernel's default and its whole tuning space.
"""

from __future__ import annotations

from .. import _tvm
from .._tvm import tvm

SPATIAL, REDUCE = 0, 2  # IterVar kinds (data parallel, commutative reduction)
MIN_LANES = 4


class NotChannelReduce(ValueError):
    """The kernel is not a channel-keeping reduction."""


def schedule_channel_reduce(sch, vector_lanes: int, threads: int) -> None:
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    kinds = [[int(iv.iter_type) for iv in sch.get(b).iter_vars] for b in blocks]
    reductions = [i for i, k in enumerate(kinds) if REDUCE in k]
    if len(reductions) != 1:
        raise NotChannelReduce(f"{len(reductions)} reduction blocks")
    index = reductions[0]
    block = blocks[index]
    if any(REDUCE in k or set(k) - {SPATIAL} for k in kinds[index + 1:]):
        raise NotChannelReduce("an epilogue that is not elementwise")
    stmt = sch.get(block)
    if len(stmt.writes) != 1:
        raise NotChannelReduce("more than one output")
    spatial_vars = [iv for iv in stmt.iter_vars if int(iv.iter_type) == SPATIAL]
    if not spatial_vars or not stmt.writes[0].region[-1].min.same_as(spatial_vars[-1].var):
        raise NotChannelReduce("the innermost output axis is not the last spatial one")
    lanes = vector_lanes
    channels = int(spatial_vars[-1].dom.extent)
    while lanes > 1 and channels % lanes:
        lanes //= 2
    if lanes < MIN_LANES:
        raise NotChannelReduce(f"{channels} channels")
    for producer in blocks[:index]:
        sch.compute_inline(producer)  # after inlining, one tensor must be left
    reads = [r for r in sch.get(block).reads if not r.source.same_as(stmt.writes[0].source)]
    if len(reads) != 1:
        raise NotChannelReduce("reads more than one tensor")
    if not reads[0].region[-1].min.same_as(spatial_vars[-1].var):
        raise NotChannelReduce("the input's innermost axis is reduced")  # a strided vector: the default is better
    loops = sch.get_loops(block)
    spatial = [loop for loop, kind in zip(loops, kinds[index]) if kind == SPATIAL]
    reduce = [loop for loop, kind in zip(loops, kinds[index]) if kind == REDUCE]
    vectors, channel_lanes = sch.split(spatial[-1], [None, lanes])
    sch.reorder(*spatial[:-1], vectors, *reduce, channel_lanes)
    outer = sch.fuse(*spatial[:-1], vectors)
    if threads > 1:
        sch.parallel(outer)
    epilogue = blocks[index + 1:]
    for consumer in epilogue:
        sch.reverse_compute_at(consumer, outer)
    sch.vectorize(channel_lanes)  # before decompose_reduction: the init keeps the vector loop
    sch.decompose_reduction(block, reduce[0])
    for consumer in epilogue:
        sch.vectorize(sch.get_loops(consumer)[-1])


def has_reduction(func) -> bool:
    """Whether any block of the kernel has a reduction axis (read from the printed kernel:
    TVM 0.27 has no TIR visitor in Python)."""
    text = func.script(show_meta=False)
    return "T.axis.reduce" in text or any(
        'T.axis.remap("' in line and "R" in line.split('T.axis.remap("')[1].split('"')[0] for line in text.splitlines()
    )


def channel_reduce_schedule(func, vector_lanes: int, threads: int):
    """The default Schedule of a channel-keeping reduction (None: not one)."""
    if not has_reduction(func):
        return None
    try:
        sch = _tvm.Schedule(tvm.ir.IRModule({"main": func}))
        schedule_channel_reduce(sch, vector_lanes, threads)
        return sch
    except Exception:  # noqa: BLE001 - not this kind of kernel, or a shape the schedule does not cover
        return None


def channel_reduce_space(vector_lanes: int, threads: int):
    """MetaSchedule space of a channel-keeping reduction: its default, one point."""

    def space(sch):
        schedule_channel_reduce(sch, vector_lanes, threads)
        return [sch]

    return _tvm.ms.space_generator.ScheduleFn(space, sch_rules=[], postprocs="llvm", mutator_probs="llvm")
