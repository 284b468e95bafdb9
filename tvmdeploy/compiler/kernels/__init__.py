"""tvmdeploy's own kernels and tensor intrinsics, and the choice of kernel per target.

- int8_packed: packed int8 conv2d/dense computes (weights packed at compile time)
- x86_intrin: the x86 dot-product intrinsics (VNNI fixed for LLVM 22, AVX2 pair sums)
- select: which packed kernel and design space a target gets
"""

from __future__ import annotations


def register_intrinsics(target_kind: str = "llvm") -> None:
    """Every tensor intrinsic a schedule for `target_kind` may use: TVM's and ours.

    Idempotent; used in-process and as MetaSchedule's builder-worker initializer (a
    module-level function, so it pickles by reference)."""
    from .. import _tvm
    from .x86_intrin import register_x86_intrinsics

    _tvm.register_tvm_tensor_intrinsics(target_kind)
    register_x86_intrinsics()
