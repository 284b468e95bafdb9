"""Softmax over the last axis for CPUs: one pass per row step, every step vectorized.

    max   m = max_k x[k]          lanes partial maxima (rfactor), then one over the lanes
    exp   e[k] = exp(x[k] - m)    TVM's polynomial exp (topi.fast_exp), computed once
    sum   s = sum_k e[k]          lanes partial sums, then one over the lanes
    norm  y[k] = e[k] / s

rows parallel, all four steps inside one row (the row stays in L1). MetaSchedule's
default for TVM's fast_softmax leaves both reductions scalar and evaluates the exp
polynomial twice (in the sum and again in the output): a BERT-base layer's attention
softmax (12 x 128 x 128) took 869 us, this one 126 us on a 2-core Xeon.

The schedule is the kernel's default and its whole tuning space (space_for_kernel): a
row's steps leave little to search, and a generic sample would only be slower.
"""

from __future__ import annotations

from .. import _tvm
from .._tvm import te, topi, tvm

BLOCK_NAME = "softmax_rows"
MAX, SHIFT, SUM, NORM = (f"{BLOCK_NAME}_{step}" for step in ("max", "shift", "sum", "norm"))
EXP = "T_fast_exp"  # topi.fast_exp's block
BLOCKS = {MAX, SHIFT, EXP, SUM, NORM}


def softmax_rows(x: "te.Tensor") -> "te.Tensor":
    """Softmax of a float32 tensor over its last axis (for bb.call_te)."""
    n = x.shape[-1]
    k = te.reduce_axis((0, n), "k")
    row_max = te.compute(x.shape[:-1], lambda *r: te.max(x[(*r, k)], axis=k), name=MAX)
    shifted = te.compute(x.shape, lambda *i: x[i] - row_max[i[:-1]], name=SHIFT)
    exp = topi.fast_exp(shifted)
    k2 = te.reduce_axis((0, n), "k2")
    row_sum = te.compute(x.shape[:-1], lambda *r: te.sum(exp[(*r, k2)], axis=k2), name=SUM)
    return te.compute(x.shape, lambda *i: exp[i] / row_sum[i[:-1]], name=NORM)


def row_lanes(row_length: int, vector_lanes: int) -> int:
    """Lanes of the partial maxima and sums: the largest power of two up to the vector
    width that divides the row (1: the row is odd, the steps stay scalar)."""
    lanes = vector_lanes
    while lanes > 1 and row_length % lanes:
        lanes //= 2
    return lanes


def holds_softmax_rows(func) -> bool:
    return BLOCK_NAME in func.script(show_meta=False)


def schedule_softmax_rows(sch, vector_lanes: int, threads: int) -> None:
    blocks = {sch.get(b).name_hint: b for b in sch.get_child_blocks(sch.get_sblock("root"))}
    if set(blocks) != BLOCKS:  # something fused into it: not this kernel's shape
        raise ValueError(f"blocks {sorted(blocks)}")
    row_length = int(sch.get(blocks[NORM]).writes[0].source.shape[-1])
    lanes = row_lanes(row_length, vector_lanes)
    partial = {}
    if lanes > 1:
        # rfactor before compute_at: it needs the reduction at the top of its loop nest.
        for name in (MAX, SUM):
            _, inner = sch.split(sch.get_loops(blocks[name])[-1], [None, lanes])
            partial[name] = sch.rfactor(inner, 0)
    sch.compute_inline(blocks[SHIFT])
    loops = sch.get_loops(blocks[NORM])
    rows = sch.fuse(*loops[:-1]) if len(loops) > 1 else None
    if rows is None:  # a 1-D softmax: one row
        rows, _ = sch.split(loops[0], [1, None])
    _, columns = sch.split(sch.get_loops(blocks[NORM])[-1], [None, lanes])
    sch.vectorize(columns)
    if threads > 1:
        sch.parallel(rows)
    order = [blocks[SUM], partial.get(SUM), blocks[EXP], blocks[MAX], partial.get(MAX)]
    for block in (b for b in order if b is not None):
        sch.compute_at(block, rows)
    _, columns = sch.split(sch.get_loops(blocks[EXP])[-1], [None, lanes])
    sch.vectorize(columns)
    for block in partial.values():
        # Its loops under the row: lane (spatial), then the row's reduction: swapped, so
        # one vector of partial results accumulates over the row.
        lane, reduction = sch.get_loops(block)[-2:]
        sch.reorder(reduction, lane)
        sch.vectorize(sch.get_loops(block)[-1])
        sch.decompose_reduction(block, sch.get_loops(block)[-2])


def softmax_rows_schedule(func, vector_lanes: int, threads: int):
    """The default schedule of a softmax_rows kernel (None: not one, or another shape)."""
    if not holds_softmax_rows(func):
        return None
    try:
        sch = _tvm.Schedule(tvm.ir.IRModule({"main": func}))
        schedule_softmax_rows(sch, vector_lanes, threads)
        return sch.mod["main"]
    except Exception:  # noqa: BLE001 - a shape the schedule does not cover: the generic default serves
        return None


def softmax_rows_space(vector_lanes: int, threads: int):
    """MetaSchedule space of a softmax_rows kernel: its default, one point."""

    def space(sch):
        schedule_softmax_rows(sch, vector_lanes, threads)
        return [sch]

    return _tvm.ms.space_generator.ScheduleFn(space, sch_rules=[], postprocs="llvm", mutator_probs="llvm")
