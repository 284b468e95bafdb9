"""Which packed int8 kernels a target gets, and the design space that tensorizes them.

    x86 with AVX-512 VNNI      u8 x s8, 16 lanes, vpdpbusd          (tvmdeploy_dot_16x4_vnni)
    x86 with AVX-512BW         u8 x s8, 16 lanes, vpmaddubsw (zmm)  (TVM's dot_16x4_avx512)
    x86 with AVX2              u8 x s8, 16 lanes, vpmaddubsw (ymm)  (tvmdeploy_dot_16x4_avx2)
    aarch64 with dotprod       s8 x s8,  4 lanes, sdot              (TVM's dot_4x4_i8i8s32_sdot)
    anything else              None: TVM's generic int8 conv/matmul
"""

from __future__ import annotations

from .. import _tvm
from .._tvm import cpu_features
from .channel_reduce import channel_reduce_schedule, channel_reduce_space, has_reduction
from .concat_copy import concat_schedule, concat_space
from .fp32_packed import BLOCK_NAME as FP32_BLOCK_NAME
from .fp32_schedule import conv2d_space
from .int8_packed import BLOCK_NAME, PackedInt8
from .layer_norm_rows import BLOCK_NAME as LAYER_NORM_BLOCK_NAME, layer_norm_rows_space
from .softmax_rows import BLOCK_NAME as SOFTMAX_BLOCK_NAME, softmax_rows_space
from .winograd_schedule import is_winograd_transform
from .x86_intrin import int8_intrinsic_for, int8_space_generator, saturates_int16

ARM_SDOT_INTRIN = "dot_4x4_i8i8s32_sdot"  # registered by tvm.s_tir.tensor_intrin.arm_cpu


def packed_int8_for(target) -> PackedInt8 | None:
    if target is None:
        return None
    features = cpu_features(target)
    x86 = int8_intrinsic_for(features)
    if x86 is not None:
        return PackedInt8(x86, 16, "uint8", 63 if saturates_int16(x86) else 127)
    if "dotprod" in features:
        return PackedInt8(ARM_SDOT_INTRIN, 4, "int8", 127)
    return None


def space_for_kernel(func, target, parallel: bool = True):
    """MetaSchedule's space generator for one kernel: the micro-kernel space for the packed
    fp32 convolutions (CPU targets), the tensorizing one for the packed int8 kernels on
    targets with an int8 instruction, else MetaSchedule's default ("post-order-apply",
    or its rules with another vector extent, see generic_vector_extent)."""
    packed = packed_space(func, target)
    if packed is not None:
        return packed
    # Reductions keep MetaSchedule's extent (pooling measured slower with a narrower one; the
    # channel-keeping ones have their own schedule, kernels/channel_reduce.py).
    extent = generic_vector_extent(func) if not has_reduction(func) else DEFAULT_VECTOR_EXTENT
    if parallel and extent == DEFAULT_VECTOR_EXTENT:
        return "post-order-apply"
    return _tvm.cpu_space(extent, parallel)


def has_fixed_schedule(func) -> bool:
    """A kernel with one schedule and nothing to search (the Winograd transforms): tuning
    leaves it to its default."""
    return is_winograd_transform(func)


def packed_space(func, target):
    """The space of a packed fp32 or int8 kernel, a row kernel (softmax, LayerNorm) or a
    channel-keeping reduction (pooling) or a concatenation; None for any other kernel."""
    # TVM 0.27 exposes no TIR visitor to Python: the printed kernel is searched for the
    # packed blocks (after fusion they sit among the epilogue's blocks).
    text = func.script(show_meta=False)
    if target is not None and target.kind.name == "llvm":
        vector, cores = target_vector_shape(target), int(target.attrs.get("num-cores", 1))
        if FP32_BLOCK_NAME in text:
            return conv2d_space(vector, cores)
        if SOFTMAX_BLOCK_NAME in text:
            return softmax_rows_space(vector[0], cores)
        if LAYER_NORM_BLOCK_NAME in text:
            return layer_norm_rows_space(vector[0], cores)
        if channel_reduce_schedule(func, vector[0], cores) is not None:
            return channel_reduce_space(vector[0], cores)
        if concat_schedule(func, cores) is not None:
            return concat_space(cores)
    spec = packed_int8_for(target)
    if spec is None or BLOCK_NAME not in text:
        return None
    return int8_space_generator(spec.intrinsic)


# MetaSchedule's (DefaultLLVM) vector extent: it fuses a kernel's loops and vectorizes
# 64 elements of the fused loop. Where 64 does not divide the innermost (channel) extent,
# a vector wraps across rows: every lane's indices become div/mod chains and the loads
# gathers (light ShuffleNet's bias+ReLU on 56x56x112: 340 us, against 19 us with 16).
DEFAULT_VECTOR_EXTENT = 64


def generic_vector_extent(func) -> int:
    """The largest power of two up to 64 that divides the innermost extent of the kernel's
    output, so vectors never wrap; 64 (MetaSchedule's) where that is under 4 (an odd
    channel count wraps whatever the extent)."""
    try:
        innermost = int(_tvm.ms.arg_info.ArgInfo.from_prim_func(func)[-1].shape[-1])
    except Exception:  # a symbolic or scalar output: MetaSchedule's extent
        return DEFAULT_VECTOR_EXTENT
    extent = DEFAULT_VECTOR_EXTENT
    while extent > 1 and innermost % extent:
        extent //= 2
    return extent if extent >= 4 else DEFAULT_VECTOR_EXTENT


def vector_shape(features: set[str], triple: str = "") -> tuple[int, int]:
    """(fp32 lanes per vector, vector registers) for a target's LLVM feature set."""
    if "avx512f" in features:
        return 16, 32
    if "avx2" in features or "avx" in features:
        return 8, 16
    if "neon" in features or triple.startswith("aarch64"):
        return 4, 32
    return 4, 16


def target_vector_shape(target) -> tuple[int, int]:
    """vector_shape of a TVM target, from its preset's features (never this machine's)."""
    return vector_shape(cpu_features(target), str(target.attrs.get("mtriple", "")))
