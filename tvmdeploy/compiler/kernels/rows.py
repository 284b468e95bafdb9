"""The schedule shared by row kernels (softmax_rows, layer_norm_rows): kernels that reduce
each row of a tensor along its last axis and then write the row.

    rows            fused and parallel: one row per step
    reductions      `lanes` partial results in a vector (rfactor over the row), then
                    one reduction over the lanes
    row buffers     (a block computed once per row and read twice, like softmax's exp)
                    vectorized
    output          vectorized

Every block is computed inside the row loop, so a row stays in L1 across the steps.
MetaSchedule's samples leave such reductions scalar (the row is the reduction's
innermost loop): a BERT-base layer's softmax took 869 us, its LayerNorms 159 us each.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import _tvm
from .._tvm import tvm


@dataclass(frozen=True)
class RowKernel:
    """Block names of a row kernel, producers first."""

    reductions: tuple[str, ...]  # reductions over the row
    row_buffers: tuple[str, ...]  # elementwise blocks kept (computed once per row)
    inlined: tuple[str, ...]  # elementwise blocks folded into their readers
    output: str

    @property
    def blocks(self) -> set[str]:
        return {*self.reductions, *self.row_buffers, *self.inlined, self.output}


def row_lanes(row_length: int, vector_lanes: int) -> int:
    """Lanes of the partial reductions and of the row's vectors: the largest power of two
    up to the vector width that divides the row (1: an odd row stays scalar)."""
    lanes = vector_lanes
    while lanes > 1 and row_length % lanes:
        lanes //= 2
    return lanes


def schedule_rows(sch, kernel: RowKernel, producer_order: tuple[str, ...], vector_lanes: int, threads: int) -> None:
    """producer_order: every block but the output, in the order they compute."""
    blocks = {sch.get(b).name_hint: b for b in sch.get_child_blocks(sch.get_sblock("root"))}
    if set(blocks) != kernel.blocks:  # something fused into it: not this kernel's shape
        raise ValueError(f"blocks {sorted(blocks)}")
    row_length = int(sch.get(blocks[kernel.output]).writes[0].source.shape[-1])
    # At least two vectors per row: with one, the partial reduction's loop has extent 1,
    # compute_at drops it and the reorder below has no loop to swap (a 16-long softmax
    # row on AVX-512 stayed unscheduled).
    lanes = row_lanes(row_length, min(vector_lanes, max(1, row_length // 2)))
    partial = {}
    if lanes > 1:
        # rfactor before compute_at: it needs the reduction at the top of its loop nest.
        for name in kernel.reductions:
            _, inner = sch.split(sch.get_loops(blocks[name])[-1], [None, lanes])
            partial[name] = sch.rfactor(inner, 0)
    for name in kernel.inlined:
        sch.compute_inline(blocks[name])
    loops = sch.get_loops(blocks[kernel.output])
    rows = sch.fuse(*loops[:-1]) if len(loops) > 1 else sch.split(loops[0], [1, None])[0]
    _, columns = sch.split(sch.get_loops(blocks[kernel.output])[-1], [None, lanes])
    sch.vectorize(columns)
    if threads > 1:
        sch.parallel(rows)
    for name in reversed([n for n in producer_order if n not in kernel.inlined]):
        sch.compute_at(blocks[name], rows)
        if name in partial:
            sch.compute_at(partial[name], rows)
    for name in kernel.row_buffers:
        _, columns = sch.split(sch.get_loops(blocks[name])[-1], [None, lanes])
        sch.vectorize(columns)
    for block in partial.values():
        # Its loops under the row: lane (spatial), then the row's reduction: swapped, so
        # one vector of partial results accumulates over the row.
        lane, reduction = sch.get_loops(block)[-2:]
        sch.reorder(reduction, lane)
        sch.vectorize(sch.get_loops(block)[-1])
        sch.decompose_reduction(block, sch.get_loops(block)[-2])


def holds(func, block_name: str) -> bool:
    return block_name in func.script(show_meta=False)


def row_schedule(func, kernel: RowKernel, producer_order, vector_lanes: int, threads: int):
    """The default Schedule of a row kernel (None: the shape is not covered; the generic
    default serves then)."""
    try:
        sch = _tvm.Schedule(tvm.ir.IRModule({"main": func}))
        schedule_rows(sch, kernel, producer_order, vector_lanes, threads)
        return sch
    except Exception:  # noqa: BLE001
        return None


def row_space(kernel: RowKernel, producer_order, vector_lanes: int, threads: int):
    """MetaSchedule space of a row kernel: its default, one point (a row's steps leave
    little to search, and a generic sample would only be slower)."""

    def space(sch):
        schedule_rows(sch, kernel, producer_order, vector_lanes, threads)
        return [sch]

    return _tvm.ms.space_generator.ScheduleFn(space, sch_rules=[], postprocs="llvm", mutator_probs="llvm")
