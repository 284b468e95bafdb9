"""The register-blocked schedule of the packed fp32 conv and dense kernels
(kernels/fp32_packed.py): the untuned default (tile from the target's registers) and the
small space tuning searches around the same micro-kernel. A dense kernel is scheduled as
the 1x1 conv it is: its rows are the output columns, its leading axes the image axes.

    output tile      RW output columns x V vectors of L channels, kept in registers
                     (RW x V + V + 1 <= vector registers: V weight vectors and one
                     broadcast beside the accumulators)
    loop order       tiles parallel over (image rows, column tiles, channel tiles),
                     channel tiles outermost when the weights outweigh the input
                     (each weight block then stays in cache across the image)
    reduction        KH, KW, IC/groups outside the tile; the tile's loops unrolled
                     around one L-lane vector

Tuning searches RW (a divisor of the output width) and V (of the channel blocks) in
both loop orders, beside the default itself: a few dozen points of the same micro-kernel
(a sample past the register budget spills, and measuring says so) instead of the
generic multi-level tiling space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import _tvm
from .._tvm import tvm
from .fp32_packed import BLOCK_NAME, CONV_BLOCK, DENSE_BLOCK, TRANSPOSED_INPUT_BLOCK

# A padded copy smaller than this is made by the calling thread alone: a parallel pass of
# its own wakes the pool's sleeping workers once more per conv (then again for the conv).
PARALLEL_PAD_BYTES = 1 << 20
MAX_VECTORS = 4  # output channel vectors per register tile
MAX_COLUMNS = 28  # output columns per register tile (one vector of channels, 32 registers)

# L1 data caches of x86 CPUs, Intel and AMD alike, have 64 sets of 64-byte lines, so
# addresses 4 KiB apart share a set; 8 ways (32 KiB) or 12 (48 KiB). The tile's input
# pixels lie a whole row of channels apart: with 1024 input channels (4 KiB) all 14
# columns of a 14-wide tile share one set and evict each other on every reduction step.
# AMD Zen 4, 14x14x1024 -> 256 1x1 conv: 14 x 2 tile 960 us, 7 x 2 524 us; 16x16x1024:
# 16 x 1 1406 us, 8 x 2 654 us (12 columns: 550 us against 371 us for 6).
L1_SET_PERIOD = 4096
L1_WAYS = 8


@dataclass(frozen=True)
class ConvTile:
    """One point of the micro-kernel's space."""

    columns: int | None  # RW: output columns per register tile (None: sampled, when tuning)
    vectors: int | None  # V: output-channel vectors per register tile (None: sampled)
    channels_outer: bool  # loop order: weight block outermost (weights reused across the image) or image rows outermost


def columns_per_cache_set(columns: int, column_bytes: int) -> int:
    """How many of a tile's `columns` input pixels, `column_bytes` apart, share one L1
    set (0 bytes: not known, taken as no conflict)."""
    if column_bytes <= 0:
        return 1
    sets_cycled = L1_SET_PERIOD // math.gcd(column_bytes, L1_SET_PERIOD)
    return -(-columns // sets_cycled)


def register_tile(
    out_width: int, channel_blocks: int, registers: int, max_vectors: int = MAX_VECTORS, column_bytes: int = 0
) -> tuple[int, int]:
    """(RW, V): the most accumulators RW x V that fit the registers beside V weight vectors
    and one broadcast (RW x V + V + 1 <= registers), with RW dividing the output width and
    V the channel blocks (a tile never runs past the edge) and at most L1_WAYS of the RW
    input pixels (`column_bytes` apart) in one cache set; among equals, the balanced one
    (fewest loads per multiply-add: 1/RW + 1/V)."""
    best = (1, 1)
    for v in range(1, max_vectors + 1):
        if channel_blocks % v:
            continue
        for rw in range(1, out_width + 1):
            if out_width % rw or rw * v + v + 1 > registers or columns_per_cache_set(rw, column_bytes) > L1_WAYS:
                continue
            score = (rw * v, -(1 / rw + 1 / v))
            if score > (best[0] * best[1], -(1 / best[0] + 1 / best[1])):
                best = (rw, v)
    return best


def default_tile(
    out_width: int, channel_blocks: int, registers: int, weight_bytes: int, input_bytes: int, column_bytes: int = 0
) -> ConvTile:
    rw, v = register_tile(out_width, channel_blocks, registers, column_bytes=column_bytes)
    return ConvTile(rw, v, channels_outer=weight_bytes > input_bytes)


class NotPackedConv(Exception):
    """The kernel has no packed conv block, or a block the schedule cannot place."""


def find_conv_block(sch):
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    convs = [b for b in blocks if sch.get(b).name_hint.startswith((CONV_BLOCK, DENSE_BLOCK))]
    if len(convs) != 1:
        raise NotPackedConv(f"{len(convs)} packed conv blocks")
    return blocks, convs[0]


def conv_geometry(sch, conv) -> tuple[int, int, int]:
    """(output width, output channels, lanes) of the packed conv block (a dense block's
    output rows are its width)."""
    block = sch.get(conv)
    out = block.writes[0].source
    weight = packed_weight(block)
    return int(out.shape[-2]), int(out.shape[-1]), int(weight.shape[4])


def packed_weight(block):
    """The packed block's weight: its one rank-5 operand."""
    return next(r.source for r in block.reads if len(r.source.shape) == 5)


def activations(block):
    """The packed block's other operand: the (padded) NHWC input of a conv, the [..., M, K]
    rows of a dense."""
    return next(r.source for r in block.reads if len(r.source.shape) != 5)


def channels_per_group(sch, conv) -> int:
    """Input channels each output channel reduces over (1: depthwise)."""
    return int(packed_weight(sch.get(conv)).shape[3])


def schedule_conv2d(sch, tile: ConvTile, threads: int) -> None:
    """The register-blocked schedule of a (fused) packed conv kernel, in place on `sch`.

    The last block (the conv, or the epilogue that FuseOps attached: bias, activation,
    residual add) is tiled RW columns x V*L channels; the conv is computed into that
    tile (a local buffer LLVM keeps in registers) with the reductions outside and the
    tile's loops unrolled around one L-lane vector; epilogue blocks in between are
    inlined; padding stays a vectorized pass of its own, parallel when the padded
    copy is big (inlined into the loads for depthwise convs)."""
    blocks, conv = find_conv_block(sch)
    _, _, lanes = conv_geometry(sch, conv)
    depthwise = channels_per_group(sch, conv) == 1
    producers = {sch.get(b).name_hint for b in sch.get_producers(conv)}
    outputs = sch.get_output_blocks(sch.get_sblock("root"))
    if len(outputs) != 1:
        raise NotPackedConv("more than one output block")
    last = outputs[0]
    pads = [b for b in blocks if sch.get(b).name_hint in producers]
    name = lambda b: sch.get(b).name_hint  # noqa: E731
    # An NCHW input read as NHWC: its transpose is folded into the padding pass (parallel
    # at any size: it replaces a transpose kernel that was), or without padding into the
    # conv's loads (each input value is one scalar broadcast, wherever it lies).
    transposed = any(name(b) == TRANSPOSED_INPUT_BLOCK for b in blocks)
    for block in blocks:
        if name(block) in producers or name(block) in (name(conv), name(last)):
            continue
        sch.compute_inline(block)  # epilogue steps between the conv and the output
    if name(last) == name(conv):
        last = sch.cache_write(conv, 0, "global")  # the conv accumulates locally, a copy writes out
    *images, ow, oc = sch.get_loops(last)  # n, oh of a conv; a dense's leading axes
    ocb, lane = sch.split(oc, [None, lanes])
    # Tuning samples the tile (None): divisors of the width and of the channel blocks.
    columns = sch.sample_perfect_tile(ow, 2, MAX_COLUMNS) if tile.columns is None else [None, tile.columns]
    vectors = sch.sample_perfect_tile(ocb, 2, MAX_VECTORS) if tile.vectors is None else [None, tile.vectors]
    owo, owi = sch.split(ow, columns)
    oco, ocv = sch.split(ocb, vectors)
    outer = [oco, *images, owo] if tile.channels_outer else [*images, owo, oco]
    sch.reorder(*outer, owi, ocv, lane)
    tile_loop = sch.fuse(*outer)
    if threads > 1:
        sch.parallel(tile_loop)
    sch.unroll(owi)
    sch.unroll(ocv)
    sch.vectorize(lane)
    sch.compute_at(conv, tile_loop, preserve_unit_loops=True)
    sch.set_scope(conv, 0, "local")
    loops = sch.get_loops(conv)
    reductions = loops[-reduction_count(sch, conv) :]  # KH, KW, IC/groups of a conv; K of a dense
    b2, b3 = loops[-len(reductions) - 2 : -len(reductions)]
    cv, cl = sch.split(b3, [None, lanes])
    sch.reorder(*reductions, b2, cv, cl)
    sch.unroll(b2)
    sch.unroll(cv)
    sch.vectorize(cl)
    init = sch.decompose_reduction(conv, reductions[0])
    _, _, init_lane = sch.get_loops(init)[-3:]
    if sch.get(init_lane).kind != sch.get(cl).kind:
        sch.vectorize(init_lane)
    for pad in pads:
        if depthwise or name(pad) == TRANSPOSED_INPUT_BLOCK:
            # One multiply-add per loaded vector: a separate padding pass would cost as much
            # memory traffic as the conv itself (1.3-2.7x slower measured); the bounds checks
            # inlined into the loads are cheaper. A conv reducing over channels reuses each
            # loaded value across its tile, so there the padded copy is the cheaper side
            # (inlined: 1.7-4x slower).
            sch.compute_inline(pad)
            continue
        loops = sch.get_loops(pad)
        if threads > 1 and (transposed or _tvm.buffer_bytes(sch.get(pad).writes[0].source) >= PARALLEL_PAD_BYTES):
            sch.parallel(sch.fuse(loops[0], loops[1]))
        sch.vectorize(loops[-1])


def reduction_count(sch, block) -> int:
    return sum(1 for v in sch.get(block).iter_vars if v.iter_type == _tvm.REDUCE_ITER)


def packed_conv2d_schedule(func, vector: tuple[int, int], threads: int):
    """The default Schedule of a kernel holding a packed fp32 conv or dense (None: it holds none,
    or the schedule cannot place one of its blocks; the generic default serves then).
    vector: (fp32 lanes, vector registers) of the target."""
    if BLOCK_NAME not in func.script(show_meta=False):
        return None
    try:
        sch = _tvm.Schedule(tvm.ir.IRModule({"main": func}))
        schedule_conv2d(sch, kernel_default_tile(sch, vector), threads)
        return sch
    except Exception:  # noqa: BLE001 - a kernel shape the schedule does not cover
        return None


def conv2d_space(vector: tuple[int, int], threads: int):
    """MetaSchedule's design space for a packed conv kernel: the untuned default itself
    (a fixed point the search measures beside its samples), and the same micro-kernel
    with RW and V sampled (perfect tiles, which MutateTileSize then mutates) in both loop
    orders; TVM's LLVM postprocessors and mutators."""

    def spaces(sch):
        out = []
        for tile in (kernel_default_tile(sch, vector), ConvTile(None, None, False), ConvTile(None, None, True)):
            copy = sch.copy()
            copy.seed(sch.fork_seed())
            schedule_conv2d(copy, tile, threads)
            out.append(copy)
        return out

    return _tvm.ms.space_generator.ScheduleFn(spaces, sch_rules=[], postprocs="llvm", mutator_probs="llvm")


def kernel_default_tile(sch, vector: tuple[int, int]) -> ConvTile:
    _, conv = find_conv_block(sch)
    out_width, out_channels, lanes = conv_geometry(sch, conv)
    registers = vector[1]
    if channels_per_group(sch, conv) == 1:
        # Depthwise: each accumulator vector loads its own input (nothing is broadcast and
        # shared across the tile's vectors), and the padding's bounds checks, inlined into
        # those loads, need registers too. Half the registers measured best: MobileNetV2's
        # ten depthwise shapes summed 847 us with 32 (14x2 tiles), 639 us with 16 (14x1),
        # 641 with 20 or 24 (AMD Zen 4, 2 threads).
        registers //= 2
    return default_tile(
        out_width, -(-out_channels // lanes), registers, *operand_bytes(sch, conv), column_bytes=column_bytes(sch, conv)
    )


def column_bytes(sch, conv) -> int:
    """Bytes between the input pixels that consecutive output columns start from: the
    column stride times a pixel's channels (NHWC). The stride is read off the shapes, the
    (padded) input width against the output width and the kernel width."""
    block = sch.get(conv)
    data, weight = activations(block), packed_weight(block)
    out_width = int(block.writes[0].source.shape[-2])
    in_width, channels, kernel_width = int(data.shape[-2]), int(data.shape[-1]), int(weight.shape[2])
    stride = (in_width - kernel_width) // (out_width - 1) if out_width > 1 else 1
    return max(stride, 1) * channels * data.dtype.bits // 8


def operand_bytes(sch, conv) -> tuple[int, int]:
    block = sch.get(conv)
    sizes = [(len(region.source.shape), _tvm.buffer_bytes(region.source)) for region in block.reads]
    weight = sum(n for rank, n in sizes if rank == 5)
    data = sum(n for rank, n in sizes if rank != 5)
    return weight, data
