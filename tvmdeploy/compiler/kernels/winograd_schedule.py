"""The schedules of the Winograd transform kernels (kernels/fp32_winograd.py).

    input transform     parallel over (tiles, channel vectors); per tile the 6x6 patch's
                        row sums B^T d in a local 6x6 tile of vectors, then B^T d B
                        written straight to the flat [1, 1, P, 36*C] layout the grouped
                        1x1 conv reads (the flattening copy is folded into that store)
    output transform    parallel over (tiles, channel vectors) of the output or of the
                        epilogue FuseOps attached (bias, activation, residual add, which
                        are inlined); m A in a local 6x4 tile, then A^T (m A) per pixel

Both unroll the tile's loops around one vector of channels, so every matrix entry is a
constant and the zeros are gone. The padding is inlined into the patch loads (bounds
checks): a padded copy would cost as much memory traffic as the transform itself.

There is nothing to tune in them: tuning skips them (kernels/select.has_fixed_schedule) and
searches only the convolution between them. (Given a one-point space, MetaSchedule's
evolutionary search still sampled and postprocessed 500 candidates a round: up to two
minutes per input transform of ResNet-50.)
"""

from __future__ import annotations

from .. import _tvm
from .._tvm import tvm
from .fp32_winograd import INPUT_BLOCK, OUTPUT_BLOCK, TILE


class NotWinograd(Exception):
    """The kernel holds no Winograd transform, or one fused with what the schedule cannot place."""


def _unroll_tile(sch, loops) -> None:
    *unrolled, lanes = loops
    for loop in unrolled:
        sch.unroll(loop)
    sch.vectorize(lanes)


def schedule_input(sch, lanes: int, threads: int) -> None:
    blocks = {sch.get(b).name_hint: b for b in sch.get_child_blocks(sch.get_sblock("root"))}
    if set(blocks) != {f"{INPUT_BLOCK}_pad", f"{INPUT_BLOCK}_rows", INPUT_BLOCK, f"{INPUT_BLOCK}_flat"}:
        raise NotWinograd(f"input transform with blocks {sorted(blocks)}")
    sch.compute_inline(blocks[f"{INPUT_BLOCK}_pad"])
    sch.reverse_compute_inline(blocks[f"{INPUT_BLOCK}_flat"])
    b, i, j, e1, e2, ch = sch.get_loops(blocks[INPUT_BLOCK])
    vector, lane = sch.split(ch, [None, lanes])
    sch.reorder(b, i, j, vector, e1, e2, lane)
    tile = sch.fuse(b, i, j, vector)
    if threads > 1:
        sch.parallel(tile)
    rows = blocks[f"{INPUT_BLOCK}_rows"]
    sch.compute_at(rows, tile, preserve_unit_loops=True)
    sch.set_scope(rows, 0, "local")
    _unroll_tile(sch, [e1, e2, lane])
    _unroll_tile(sch, sch.get_loops(rows)[-3:])


def schedule_output(sch, lanes: int, threads: int) -> None:
    root = sch.get_sblock("root")
    outputs = sch.get_output_blocks(root)
    if len(outputs) != 1:
        raise NotWinograd("more than one output block")
    last = outputs[0]
    columns = sch.get_sblock(f"{OUTPUT_BLOCK}_columns")
    for block in sch.get_child_blocks(root):
        name = sch.get(block).name_hint
        if name not in (sch.get(columns).name_hint, sch.get(last).name_hint):
            sch.compute_inline(block)  # the transform itself and the epilogue steps before the last
    loops = sch.get_loops(last)
    if len(loops) != 4:
        raise NotWinograd(f"output block with {len(loops)} loops")
    b, y, x, ch = loops
    i, row = sch.split(y, [None, TILE])
    j, column = sch.split(x, [None, TILE])
    vector, lane = sch.split(ch, [None, lanes])
    sch.reorder(b, i, j, vector, row, column, lane)
    tile = sch.fuse(b, i, j, vector)
    if threads > 1:
        sch.parallel(tile)
    sch.compute_at(columns, tile, preserve_unit_loops=True)
    sch.set_scope(columns, 0, "local")
    _unroll_tile(sch, [row, column, lane])
    _unroll_tile(sch, sch.get_loops(columns)[-3:])


def _schedule(sch, lanes: int, threads: int) -> None:
    names = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))}
    if f"{INPUT_BLOCK}_rows" in names:
        schedule_input(sch, lanes, threads)
    elif f"{OUTPUT_BLOCK}_columns" in names:
        schedule_output(sch, lanes, threads)
    else:
        raise NotWinograd("no Winograd transform block")


def is_winograd_transform(func) -> bool:
    text = func.script(show_meta=False)
    return f"{INPUT_BLOCK}_rows" in text or f"{OUTPUT_BLOCK}_columns" in text


def winograd_schedule(func, lanes: int, threads: int):
    """The Schedule of a Winograd transform kernel (None: not one, or fused with blocks the
    schedule cannot place; the generic default serves then)."""
    if not is_winograd_transform(func):
        return None
    try:
        sch = _tvm.Schedule(tvm.ir.IRModule({"main": func}))
        _schedule(sch, lanes, threads)
        return sch
    except Exception:  # noqa: BLE001 - a fusion the schedule does not cover
        return None
