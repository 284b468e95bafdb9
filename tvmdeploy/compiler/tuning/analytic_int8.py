"""The untuned default of the packed int8 kernels: MetaSchedule's tensorizing design space
replayed with a register-blocked tile derived from the target (no measuring).

The kernels (kernels/int8_packed.py) are tiled by MultiLevelTilingWithIntrin "SSRSRS":
each spatial loop (conv: batch, output rows, output columns, output-channel blocks of L
lanes; dense: rows..., output-channel blocks) in 4 tiles S0..S3, each reduction (conv:
KH, KW, input-channel groups of 4; dense: groups of 4) in 2 tiles R0, R1, in the order
S0 S1 R0 S2 R1 S3, around the L x 4 dot-product intrinsic. A random first sample of that
space ran light ResNet-50 int8 in ~409 ms (10 GOPS on a 3x3 conv); the tile here:

    S3, output columns     RW columns }  RW x V int32 accumulators of L lanes: the
    S2, channel blocks     V vectors  }  register tile, RW x V + V <= half the vector
                                         registers (register_tile, fp32_schedule.py)
    R1, input channels     4 groups of 4 (16 channels) per step; KH, KW outside (R0)
    S0                     everything else: the outer spatial loops, fused and parallel
    unroll                 512 steps: the whole S2 x R1 x S3 nest becomes straight-line
                           code in which LLVM keeps the accumulators in registers
    compute locations      at the root (the padded input is its own parallel pass)

Measured on an Intel Xeon (Emerald Rapids VM, AVX-512 VNNI, 2 cores, another job on the
machine; interleaved medians) on light ResNet-50's convolutions: 14-16 accumulators run
at 600-650 GOPS; 28 accumulators (what the fp32 rule, RW x V + V + 1 <= registers, would
give) spill and run 2-3x slower; 7 run ~1.6x slower; a chunk of 4 groups beat 8 and 16 by
0-8 %; 64 unroll steps instead of 512 ran 2x slower (the tile stays a loop). Whole
model, interleaved: 612.7 ms with the first samples (17 of the 44 kernels had none that
built within 8 tries and stayed naive loops) -> 27.7 ms. AVX2 (the x86_64-avx2 preset on
the same CPU; ymm, 2 registers per accumulator, budget 4): tiles of 2-14 accumulators
within 12 %, the rule's 2 x 1 among the fastest. ARM sdot: the same rule, not measured.

The vectors sit in S2, not S3: the postprocessor vectorizes the innermost spatial loop,
and a vectorized loop around the intrinsic fails codegen ("Cannot broadcast lanes=16 to
32"). Fully unrolled, S2 x R1 x S3 is one block of code either way.

lanes / registers come from the target preset's CPU features, never from this machine:
an accumulator of L int32 lanes takes L / (fp32 lanes) vector registers (AVX-512: 1 zmm,
AVX2: 2 ymm, NEON sdot: 1 q register).
"""

from __future__ import annotations

import math

from .. import _tvm
from .._tvm import ms, tvm
from ..kernels.fp32_schedule import register_tile
from ..kernels.int8_packed import BLOCK_NAME as INT8_BLOCK_NAME
from ..kernels.select import packed_int8_for, space_for_kernel, target_vector_shape
from .analytic import _largest_divisor

SPATIAL_TILES = 4  # "SSRSRS": spatial loops in 4 tiles, reduction loops in 2
REDUCTION_TILES = 2
CHUNK_GROUPS = 4  # input-channel groups of 4 per reduction step (16 channels)
UNROLL_STEPS = 512  # of MetaSchedule's unroll candidates [0, 16, 64, 512]
MAX_VECTORS = 4


def accumulator_registers(target) -> int:
    """Vector registers the int8 register tile's accumulators may take: half the target's
    registers, counted in accumulators of the instruction's L int32 lanes. The other half
    holds the broadcast inputs, the weight vectors and the intrinsic's temporaries (on
    AVX2 two vpmaddubsw results per instruction)."""
    lanes, registers = target_vector_shape(target)
    spec = packed_int8_for(target)
    per_accumulator = max(1, (spec.lanes if spec else lanes) // lanes)
    return max(1, registers // per_accumulator // 2)


def int8_tile(width: int, blocks: int, accumulators: int) -> tuple[int, int]:
    """(RW, V): output columns and channel vectors of the register tile, RW x V + V <=
    accumulators (register_tile's rule with the accumulators in place of the registers,
    its +1 broadcast counted in the other half)."""
    return register_tile(width, blocks, accumulators + 1, max_vectors=MAX_VECTORS)


def tile_decisions(group: list[tuple], accumulators: int) -> dict | None:
    """SamplePerfectTile decisions for the tensorized block's loops (instruction, extent,
    tile count, in loop order); None where its tiling is not the expected "SSRSRS"."""
    spatial = [k for k, (_, _, n) in enumerate(group) if n == SPATIAL_TILES]
    reduction = [k for k, (_, _, n) in enumerate(group) if n == REDUCTION_TILES]
    if not spatial or not reduction or len(spatial) + len(reduction) != len(group):
        return None
    vec_axis = spatial[-1]
    col_axis = spatial[-2] if len(spatial) > 1 else None
    width = group[col_axis][1] if col_axis is not None else 1
    columns, vectors = int8_tile(width, group[vec_axis][1], accumulators)
    decisions = {}
    for k, (inst, extent, _) in enumerate(group):
        if k == vec_axis:
            decisions[inst] = [extent // vectors, 1, vectors, 1]
        elif k == col_axis:
            decisions[inst] = [extent // columns, 1, 1, columns]
        elif k in spatial:
            decisions[inst] = [extent, 1, 1, 1]
        elif k == reduction[-1]:  # the input-channel groups: a chunk per step
            chunk = _largest_divisor(extent, CHUNK_GROUPS)
            decisions[inst] = [extent // chunk, chunk]
        else:  # kernel rows and columns: outside the step
            decisions[inst] = [extent, 1]
    return decisions


def int8_default_schedule(func, target, cores: int, seed: int = 1):
    """The packed int8 kernel's default Schedule (its trace: the tensorizing space's first
    sample with the decisions above, then the postprocessors), or None where the kernel is
    not a packed int8 kernel of this target, its space has no tensorized tiling of the
    expected shape, a postprocessor rejects the result or it does not build."""
    if packed_int8_for(target) is None or INT8_BLOCK_NAME not in func.script(show_meta=False):
        return None
    context = ms.TuneContext(
        mod=tvm.ir.IRModule({"main": func.with_attr("global_symbol", "main")}),
        target=target,
        space_generator=space_for_kernel(func, target),
        search_strategy="replay-trace",
        num_threads=cores,
        rand_state=seed,
    )
    try:
        with _tvm.native_stderr_to(None):  # C++ warnings of rules and of a failed tensorize
            spaces = context.generate_design_space()
            if not spaces:
                return None
            schedule = _replay(context, spaces[0].trace, target)
            if schedule is None or not _tvm.builds(schedule.mod, target):
                return None
            return schedule
    except Exception:  # noqa: BLE001 - a rule, decision or postprocessor this kernel breaks
        return None


def _replay(context, trace, target):
    groups = _tvm.tiled_blocks(trace, tensorized_only=True)
    if len(groups) != 1:  # no tensorized block (the intrinsic did not match), or several
        return None
    decisions = tile_decisions(groups[0], accumulator_registers(target))
    # Tiles must multiply to their loop's extent: the replay itself accepts any factors
    # (a tile of 12 on a width of 11 built and computed garbage).
    extents = {inst: extent for inst, extent, _ in groups[0]}
    if decisions is None or any(math.prod(d) != extents[inst] for inst, d in decisions.items()):
        return None
    for inst, candidates in _tvm.unroll_choices(trace):
        decisions[inst] = candidates.index(UNROLL_STEPS) if UNROLL_STEPS in candidates else len(candidates) - 1
    # At the root: a padded input computed inside the tile is either redone per tile or,
    # inlined, breaks the pattern the intrinsic matches.
    decisions.update({inst: _tvm.COMPUTE_AT_ROOT for inst in _tvm.compute_location_choices(trace)})
    schedule = _tvm.replay_with_decisions(context.mod, trace, decisions)
    return schedule if _tvm.postprocessed(schedule, context.space_generator.postprocs) else None
