"""int8 dot-product tensor intrinsics for x86 (VNNI, AVX2), and the MetaSchedule space
that tensorizes int8 conv/dense kernels with them.

TVM registers `dot_16x4_vnni` (vpdpbusd) and `dot_16x4_avx512` (vpmaddubsw/vpmaddwd on
zmm) for x86, but
  - its `dot_16x4_vnni` no longer builds: LLVM 21 changed `llvm.x86.avx512.vpdpbusd.512`
    to take <64 x i8> operands, and TVM 0.27's wheel (LLVM 22) still passes <16 x i32>
    ("Call parameter type does not match function signature"); `tvmdeploy_dot_16x4_vnni`
    is the same instruction with the new operand types;
  - there is nothing for AVX2-only CPUs (Haswell .. Zen 3), so an int8 dense or conv there
    is scheduled as plain widening multiply-adds: `tvmdeploy_dot_16x4_avx2`.
All share the description

    C[i] += int32(A[k]) * int32(B[i, k])   A: uint8 (4,), B: int8 (16, 4), C: int32 (16,)

so one weight packing ([N // 16, K // 4, 16, 4]) serves every x86 target. The body is two
256-bit halves of 8 output lanes each: A's 4 bytes are broadcast as an int32 to 8 lanes and
reinterpreted as uint8x32; B's 64 bytes are two int8x32 vectors; each half is
`llvm.x86.avx2.pmadd.ub.sw` (vpmaddubsw: u8 x s8 -> adjacent pairs summed into int16)
then `llvm.x86.avx2.pmadd.wd` with ones (vpmaddwd: int16 pairs -> int32), added into
C[0:8] and C[8:16].

Contract (why this is not a drop-in for VNNI): vpmaddubsw SATURATES each int16 pair sum
`A[2j] * B[i, 2j] + A[2j+1] * B[i, 2j+1]`. With A in [0, 255] and B in [-128, 127] a pair
reaches 2 * 255 * 127 = 64770 (or -65280), far outside int16's [-32768, 32767]. Results are
exact only when every pair sum fits in int16, which holds for all activations when the
weights lie in [-64, 63] (2 * 255 * 64 = 32640), or for all weights when the activations lie
in [0, 127] (2 * 127 * 128 = 32512). The intrinsic does not check this: the caller must
limit the weight range (e.g. quantize to 7 bits) on AVX2 targets. Beyond that, the result
is the saturating pair sum, bit for bit (see tests/test_x86_intrin.py).
"""

from __future__ import annotations

from .._tvm import TIR_EXP_OP, T, TensorIntrin, ms

AVX2_DOT_16x4_INTRIN = "tvmdeploy_dot_16x4_avx2"
VNNI_DOT_16x4_INTRIN = "tvmdeploy_dot_16x4_vnni"
AVX512_DOT_16x4_INTRIN = "dot_16x4_avx512"  # TVM's own (vpmaddubsw on zmm); builds as is


@T.prim_func(s_tir=True)
def dot_product_16x4_u8i8i32_desc(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    # Same as tvm.s_tir.tensor_intrin.x86's (not imported: importing that package's
    # __init__ registers the CUDA intrinsics too, which takes ~20-35 s here).
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        for i in T.serial(0, 16):
            for k in T.serial(0, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def dot_product_16x4_u8i8i32_avx2(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])

        A_u8x4 = A.vload([0], "uint8x4")
        A_i32 = T.reinterpret(A_u8x4, dtype="int32")
        A_brdcst = T.broadcast(A_i32, 8)
        A_u8x32 = T.reinterpret(A_brdcst, dtype="uint8x32")

        # Rows 0..7 and 8..15 of B: 32 bytes each.
        B_lo = B.vload([0, 0], dtype="int8x32")
        B_hi = B.vload([8, 0], dtype="int8x32")

        Red_lo = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"),
            A_u8x32,
            B_lo,
            dtype="int16x16",
        )
        C[T.ramp(T.int32(0), 1, 8)] += T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
            Red_lo,
            T.int16x16(1),
            dtype="int32x8",
        )

        Red_hi = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"),
            A_u8x32,
            B_hi,
            dtype="int16x16",
        )
        C[T.ramp(T.int32(8), 1, 8)] += T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
            Red_hi,
            T.int16x16(1),
            dtype="int32x8",
        )


@T.prim_func(s_tir=True)
def dot_product_16x4_u8i8i32_vnni(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        A_u8x4 = A.vload([0], "uint8x4")
        A_i32 = T.reinterpret(A_u8x4, dtype="int32")
        A_u8x64 = T.reinterpret(T.broadcast(A_i32, 16), dtype="uint8x64")
        B_i8x64 = B.vload([0, 0], dtype="int8x64")
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
            C.vload([0], dtype="int32x16"),
            A_u8x64,
            B_i8x64,
            dtype="int32x16",
        )


_IMPLEMENTATIONS = {
    AVX2_DOT_16x4_INTRIN: dot_product_16x4_u8i8i32_avx2,
    VNNI_DOT_16x4_INTRIN: dot_product_16x4_u8i8i32_vnni,
}


def register_x86_intrinsics() -> None:
    """Register tvmdeploy's x86 intrinsics. Idempotent; also a builder worker initializer.

    TensorIntrin.register raises on a name that is already registered (unless
    override=True), so look it up first.
    """
    for name, impl in _IMPLEMENTATIONS.items():
        if TensorIntrin.get(name, allow_missing=True) is None:
            TensorIntrin.register(name, dot_product_16x4_u8i8i32_desc, impl)


def int8_intrinsic_for(cpu_features) -> str | None:
    """The int8 dot-product intrinsic the CPU's features allow (None: none of them).

    cpu_features: LLVM feature names of the target (avx512vnni, avx512bw, avx2...).
    """
    features = set(cpu_features)
    if "avx512vnni" in features:
        return VNNI_DOT_16x4_INTRIN
    if "avx512bw" in features:
        return AVX512_DOT_16x4_INTRIN
    if "avx2" in features:
        return AVX2_DOT_16x4_INTRIN
    return None


def saturates_int16(intrin: str | None) -> bool:
    """True where u8 x s8 pair sums go through int16 (vpmaddubsw): weights must stay in
    [-64, 63] for exact results."""
    return intrin in (AVX2_DOT_16x4_INTRIN, AVX512_DOT_16x4_INTRIN)


def _reuse_write() -> ms.schedule_rule.ReuseType:
    return ms.schedule_rule.ReuseType(req="may", levels=[1, 2], scope="global")


def int8_schedule_rules(intrin: str = AVX2_DOT_16x4_INTRIN) -> list[ms.schedule_rule.ScheduleRule]:
    """TVM's C++ ScheduleRule::DefaultX86("vnni") with `intrin`.

    That list is not exposed to Python (only DefaultLLVM/CUDA/Hexagon/ARM are), so it is
    spelled out here. As in C++, the plain MultiLevelTiling follows the intrinsic one so
    that blocks the intrinsic does not match are still tiled.
    """
    sr = ms.schedule_rule
    return [
        sr.ApplyCustomRule(),
        sr.InlineConstantScalars(),
        sr.AutoInline(
            into_producer=False,
            into_consumer=True,
            inline_const_tensor=True,
            disallow_if_then_else=True,
            require_injective=True,
            require_ordered=True,
            disallow_op=[TIR_EXP_OP],
        ),
        sr.AddRFactor(max_jobs_per_core=16, max_innermost_factor=64),
        sr.MultiLevelTilingWithIntrin(
            intrin,
            structure="SSRSRS",
            tile_binds=None,
            max_innermost_factor=64,
            vector_load_lens=None,
            reuse_read=None,
            reuse_write=_reuse_write(),
        ),
        sr.MultiLevelTiling(
            structure="SSRSRS",
            tile_binds=None,
            max_innermost_factor=64,
            vector_load_lens=None,
            reuse_read=None,
            reuse_write=_reuse_write(),
        ),
        sr.ParallelizeVectorizeUnroll(
            max_jobs_per_core=16,
            max_vectorize_extent=64,
            unroll_max_steps=[0, 16, 64, 512],
            unroll_explicit=True,
        ),
        sr.RandomComputeLocation(),
    ]


def int8_postprocs() -> list[ms.postproc.Postproc]:
    """C++ Postproc::DefaultCPUTensorization (DefaultLLVM plus RewriteTensorize)."""
    pp = ms.postproc
    return [
        pp.DisallowDynamicLoop(),
        pp.RewriteParallelVectorizeUnroll(),
        pp.RewriteReductionBlock(),
        pp.RewriteTensorize(vectorize_init_loop=True),
        pp.RewriteLayout(),
    ]


def int8_space_generator(intrin: str = AVX2_DOT_16x4_INTRIN) -> ms.space_generator.PostOrderApply:
    """A PostOrderApply space generator that tensorizes u8 x s8 reductions with `intrin`.

    Registers the intrinsic (MultiLevelTilingWithIntrin looks it up by name). Mutators are
    TVM's LLVM defaults (MutateTileSize 0.9, MutateComputeLocation 0.05, MutateUnroll 0.03,
    MutateParallel(max_jobs_per_core=16) 0.02).
    """
    register_x86_intrinsics()
    return ms.space_generator.PostOrderApply(
        sch_rules=int8_schedule_rules(intrin),
        postprocs=int8_postprocs(),
        mutator_probs="llvm",
    )


__all__ = [
    "AVX2_DOT_16x4_INTRIN",
    "AVX512_DOT_16x4_INTRIN",
    "VNNI_DOT_16x4_INTRIN",
    "int8_intrinsic_for",
    "int8_postprocs",
    "int8_schedule_rules",
    "int8_space_generator",
    "register_x86_intrinsics",
    "saturates_int16",
]
