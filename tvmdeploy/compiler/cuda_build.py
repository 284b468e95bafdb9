"""Build-time CUDA: compiled device code inside model.so, built on a machine without a GPU.

TVM 0.27's CUDA codegen hands the generated CUDA C++ to the factory that TVM's CUDA
runtime registers ("ffi.Module.create.cuda"), which compiles it at once through the
`tvm_callback_cuda_compile` callback. That runtime (libtvm_runtime_cuda.so) links the
NVIDIA driver, libcuda.so.1, so on a machine without one TVM skips it, and codegen falls
back to a module that carries only the *source*: the deployment machine would then have
to compile every kernel when loading the artifact, with nvcc or NVRTC and TVM's
compiler-side Python, which a thin runtime must not need. So for a CUDA build:

1. The real factory is made present: the sidecar is loaded, and where there is no driver,
   against a stub libcuda.so.1 (cuda_stub.py).
2. Kernels are compiled ahead of time with nvcc into a fatbin (SASS for the preset's
   arch plus its PTX), through our callback for the duration of the build.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from typing import Iterator

from . import _tvm
from .kernels import register_intrinsics
from .cuda_stub import driver_present, load_stub_driver
from ..runtime.devices import cuda_runtime_problem
from ..errors import BuildError


@contextlib.contextmanager
def cuda_codegen(arch: str, preset_name: str) -> Iterator[None]:
    """Within: tvm.compile for a CUDA target embeds a fatbin for `arch` (e.g. "sm_80")."""
    require_nvcc(preset_name)
    require_nvcc_arch(arch, preset_name)
    ensure_cuda_factory()
    with _tvm.nvcc_for_cuda(arch):
        yield


def require_nvcc(preset_name: str) -> None:
    if shutil.which("nvcc") is None:
        raise BuildError(
            f"preset {preset_name} compiles GPU kernels with nvcc, which is not on PATH; install the "
            f"CUDA toolkit (no GPU needed to build) and put its bin/ on PATH"
        )


def nvcc_gpu_archs() -> list[str] | None:
    """The virtual archs this nvcc compiles for ("compute_87", ...); None if it cannot say."""
    try:
        out = subprocess.run(["nvcc", "--list-gpu-arch"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    archs = re.findall(r"compute_\d+[a-z]?", out)
    return archs or None


def require_nvcc_arch(arch: str, preset_name: str) -> None:
    """An nvcc too new (or too old) for the preset's GPU: one line, before the compile.

    CUDA 13 dropped Maxwell, Pascal and Volta (sm_72: Jetson Xavier, whose JetPack 5 ships
    CUDA 11.4); otherwise nvcc fails deep inside the build with "Unsupported gpu architecture".
    """
    archs = sorted(nvcc_gpu_archs() or [], key=lambda a: int(re.sub(r"\D", "", a)))
    wanted = "compute_" + arch.removeprefix("sm_")
    if not archs or wanted in archs:
        return
    raise BuildError(
        f"preset {preset_name} needs device code for {arch}, which nvcc {nvcc_version() or ''} on PATH cannot "
        f"produce (it supports {archs[0].replace('compute_', 'sm_')}..{archs[-1].replace('compute_', 'sm_')}); put a CUDA "
        f"toolkit that still supports {arch} first on PATH (sm_72/Jetson Xavier: CUDA 12.x or older)"
    )


def nvcc_version() -> str | None:
    """"13.0" from `nvcc --version`, for the manifest."""
    try:
        out = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"release (\d+\.\d+)", out)
    return found.group(1) if found else None


def ensure_cuda_factory() -> None:
    """Load TVM's CUDA runtime, against a stub driver if this machine has none (idempotent)."""
    problem = cuda_runtime_problem()
    if problem is not None and not driver_present():
        load_stub_driver()
        problem = cuda_runtime_problem()
    if problem is not None:
        raise BuildError(f"compiling CUDA kernels needs TVM's CUDA runtime, but {problem}")


def builder_worker_setup(arch: str) -> None:
    """MetaSchedule builder workers (fresh processes) for a CUDA target: the CUDA factory
    and nvcc for `arch`. Of the tensor intrinsics only the cheap CPU ones: a candidate
    arrives already tensorized (postprocessors run in the tuning process), and registering
    the CUDA ones costs ~22 s per worker, which times the builds out."""
    register_intrinsics("llvm")
    ensure_cuda_factory()
    _tvm.use_nvcc_for_cuda(arch)
