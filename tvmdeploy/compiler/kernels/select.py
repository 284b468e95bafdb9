"""Which packed int8 kernels a target gets, and the design space that tensorizes them.

    x86 with AVX-512 VNNI      u8 x s8, 16 lanes, vpdpbusd          (tvmdeploy_dot_16x4_vnni)
    x86 with AVX-512BW         u8 x s8, 16 lanes, vpmaddubsw (zmm)  (TVM's dot_16x4_avx512)
    x86 with AVX2              u8 x s8, 16 lanes, vpmaddubsw (ymm)  (tvmdeploy_dot_16x4_avx2)
    aarch64 with dotprod       s8 x s8,  4 lanes, sdot              (TVM's dot_4x4_i8i8s32_sdot)
    anything else              None: TVM's generic int8 conv/matmul
"""

from __future__ import annotations

from .._tvm import cpu_features
from .fp32_packed import BLOCK_NAME as FP32_BLOCK_NAME
from .fp32_schedule import conv2d_space
from .int8_packed import BLOCK_NAME, PackedInt8
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


def space_for_kernel(func, target):
    """MetaSchedule's space generator for one kernel: the micro-kernel space for the packed
    fp32 convolutions (CPU targets), the tensorizing one for the packed int8 kernels on
    targets with an int8 instruction, else MetaSchedule's default ("post-order-apply")."""
    # TVM 0.27 exposes no TIR visitor to Python: the printed kernel is searched for the
    # packed blocks (after fusion they sit among the epilogue's blocks).
    text = func.script(show_meta=False)
    if FP32_BLOCK_NAME in text and target is not None and target.kind.name == "llvm":
        return conv2d_space(target_vector_shape(target), int(target.attrs.get("num-cores", 1)))
    spec = packed_int8_for(target)
    if spec is None or BLOCK_NAME not in text:
        return "post-order-apply"
    return int8_space_generator(spec.intrinsic)


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
