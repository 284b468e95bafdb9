"""Concatenation on CPUs, copied in whole vectors.

A legalized concat is one block whose value picks its input per element,
`if_then_else(64 <= c, b[c - 64], a[c])`; MetaSchedule's default sample keeps that
per-element choice and leaves the copy scalar. In NHWC a fire module's concat along the
channels (light SqueezeNet, 55x55x(64+64), AMD Zen 4, 2 threads) took 125 us: 12 % of
the model's kernel time in four such kernels. Scheduled here, 21 us.

    loops    axes before the concatenated one, fused and parallel
             -> runs of g elements along it (g: gcd of the inputs' extents, so a run
                lies inside one input), unrolled: each copy's condition is constant
             -> the run and the axes after it, in vectors

Taken by kernels of spatial blocks only (elementwise epilogues that FuseOps attached are
inlined) whose inputs all match the output but along one axis, where their extents add
up to the output's. The schedule is the kernel's default; copies are not tuned.
"""

from __future__ import annotations

import math

from .. import _tvm
from .._tvm import tvm
from .channel_reduce import SPATIAL

MAX_UNROLLED_RUNS = 64
VECTOR_CHUNKS = (64, 32, 16, 8, 4)  # elements per vectorized loop, the largest dividing the run


class NotConcat(ValueError):
    """The kernel is not a concatenation this schedule covers."""


def concat_axis(out_shape: list[int], in_shapes: list[list[int]]) -> int:
    """The axis along which the inputs join into the output (NotConcat: none)."""
    if len(in_shapes) < 2 or any(len(s) != len(out_shape) for s in in_shapes):
        raise NotConcat("fewer than two inputs of the output's rank")
    differing = {i for s in in_shapes for i, (a, b) in enumerate(zip(s, out_shape)) if a != b}
    if len(differing) != 1:
        raise NotConcat("the inputs differ from the output along more than one axis")
    axis = differing.pop()
    if sum(s[axis] for s in in_shapes) != out_shape[axis]:
        raise NotConcat("the inputs' extents do not add up to the output's")
    return axis


def schedule_concat(sch, threads: int) -> None:
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    if any(int(iv.iter_type) != SPATIAL for b in blocks for iv in sch.get(b).iter_vars):
        raise NotConcat("a block that is not spatial")
    if not any(sch.get(b).name_hint.startswith("T_concat") for b in blocks):
        raise NotConcat("no concatenate block")
    for block in blocks[:-1]:
        sch.compute_inline(block)
    block = sch.get_child_blocks(sch.get_sblock("root"))[0]
    stmt = sch.get(block)
    out_shape = [int(d) for d in stmt.writes[0].source.shape]
    axis = concat_axis(out_shape, [[int(d) for d in r.source.shape] for r in stmt.reads])
    if axis == 0:
        raise NotConcat("concatenated along the first axis")
    run = math.gcd(*(int(r.source.shape[axis]) for r in stmt.reads))
    loops = sch.get_loops(block)
    if len(loops) != len(out_shape):
        raise NotConcat("loops are not the output's axes")
    runs, within = sch.split(loops[axis], [None, run])
    outer = sch.fuse(*loops[:axis])
    if threads > 1:
        sch.parallel(outer)
    if out_shape[axis] // run <= MAX_UNROLLED_RUNS:
        sch.unroll(runs)
    inner = sch.fuse(within, *loops[axis + 1:])
    extent = run * math.prod(out_shape[axis + 1:])
    chunk = next((c for c in VECTOR_CHUNKS if extent % c == 0), None)
    if chunk is not None:
        sch.vectorize(sch.split(inner, [None, chunk])[1])


def concat_schedule(func, threads: int):
    """The default Schedule of a concatenation (None: not one)."""
    if "T_concat" not in func.script(show_meta=False):
        return None
    try:
        sch = _tvm.Schedule(tvm.ir.IRModule({"main": func}))
        schedule_concat(sch, threads)
        return sch
    except Exception:  # noqa: BLE001 - not this kind of kernel, or a shape the schedule does not cover
        return None


def concat_space(threads: int):
    """MetaSchedule space of a concatenation (one fused with an activation is tuned): its
    default, one point."""

    def space(sch):
        schedule_concat(sch, threads)
        return [sch]

    return _tvm.ms.space_generator.ScheduleFn(space, sch_rules=[], postprocs="llvm", mutator_probs="llvm")
