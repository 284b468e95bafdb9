"""Analytic tile sizes for the untuned default of matmul/dense kernels (no measuring).

MetaSchedule's first design-space sample picks its tile sizes at random; for a matmul
that often leaves the output's innermost axis untiled, so nothing is vectorized (BERT
layer matmuls: 3-6 GFLOPS). Here the same design space (multi-level tiling "SSRSRS",
weights repacked by RewriteLayout) is replayed with tile sizes derived from the target:

    innermost tile of the output's last axis    2 x lanes (else lanes, else its largest
                                                divisor <= 2 x lanes): the vector loop
    innermost tile of the axis before it        rows of the register tile, so that
                                                rows x vectors <= half the vector registers
    next tile of those two                      a cache block: <= 256 columns, <= 4 rows
    the other spatial axes                      all outer (parallel)
    reduction                                   inner chunk <= 64 (MetaSchedule's cap)
    unroll                                      up to 64 steps

lanes / registers come from the target preset's CPU features, never from this machine:
AVX-512 16 / 32, AVX2 8 / 16, NEON 4 / 32, anything else 4 / 16.

Only kernels with one reduction axis (matmul, dense, batch matmul, fused epilogues) take
it: on NCHW convolutions these tiles vectorize along the output width, which measured
no better than the random sample (a packed NCHWc convolution is what those need).
"""

from __future__ import annotations

from ..kernels.select import vector_shape  # noqa: F401 - re-exported (tests and the benchmark import it here)

SPATIAL_TILES = 4  # "SSRSRS": spatial axes split in 4, reduction axes in 2
REDUCTION_TILES = 2

MAX_INNERMOST = 64  # MetaSchedule's max_innermost_factor for CPU tiling
UNROLL_CHOICE = 64  # of MetaSchedule's unroll candidates [0, 16, 64, 512]


def _largest_divisor(n: int, cap: int) -> int:
    return max(d for d in range(1, max(1, min(n, cap)) + 1) if n % d == 0)


def matmul_like(group: list[int]) -> bool:
    """group: the tile counts (4 spatial, 2 reduction) of one tiled block, in loop order."""
    return group.count(REDUCTION_TILES) == 1 and SPATIAL_TILES in group


def tile_sizes(extents: list[int], tiles: list[int], lanes: int, registers: int) -> list[list[int]]:
    """Tile sizes per loop (outer to inner) for one tiled block whose loops have these
    extents and tile counts (4: spatial, 2: reduction), in the block's loop order."""
    spatial = [k for k, n in enumerate(tiles) if n == SPATIAL_TILES and extents[k] > 1]
    last = spatial[-1] if spatial else None
    rows_axis = spatial[-2] if len(spatial) > 1 else None
    out: list[list[int]] = []
    vectors = 1
    if last is not None:  # decide the vector axis first: the rows depend on it
        e = extents[last]
        inner = 2 * lanes if e % (2 * lanes) == 0 else lanes if e % lanes == 0 else _largest_divisor(e, 2 * lanes)
        vectors = -(-inner // lanes)
    for k, (e, n) in enumerate(zip(extents, tiles)):
        if n == REDUCTION_TILES:
            inner = _largest_divisor(e, MAX_INNERMOST)
            out.append([e // inner, inner])
            continue
        if k == last:
            inner = 2 * lanes if e % (2 * lanes) == 0 else lanes if e % lanes == 0 else _largest_divisor(e, 2 * lanes)
            block = _largest_divisor(e // inner, max(1, 256 // inner))
        elif k == rows_axis:
            inner = _largest_divisor(e, min(MAX_INNERMOST, max(1, (registers // 2) // vectors)))
            block = _largest_divisor(e // inner, 4)
        else:
            inner, block = 1, 1
        out.append([e // (inner * block), 1, block, inner])
    return out
