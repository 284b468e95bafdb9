"""GPU presence for the thin loader (and the tuner): driver, device, compute capability.

TVM's CUDA runtime lives in a sidecar library, libtvm_runtime_cuda.so, beside
libtvm_runtime.so. It links against the NVIDIA driver (libcuda.so.1), and TVM loads it
only in compiler mode, silently skipping it when the driver is missing; with
TVM_USE_RUNTIME_LIB=1 it is never loaded. Without it `tvm.runtime.load_module` of a CUDA
artifact dies with "a loader of that name is not registered", which names neither the
driver nor the GPU. This module loads the sidecar itself and turns each missing piece
into a one-line DeviceUnavailableError.

Runtime side: imports only TVM's runtime library (never tvmdeploy._tvm).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import DeviceUnavailableError
from .tvm_library import import_tvm

_SIDECAR = "libtvm_runtime_cuda.so"
# Set when this process compiled CUDA code against the compiler's stub libcuda.so.1: it
# then has no real driver, whatever TVM's CUDA runtime says.
_stub_driver_loaded = False


def note_stub_driver_loaded() -> None:
    global _stub_driver_loaded
    _stub_driver_loaded = True


# Registered by the sidecar; its presence means the CUDA runtime is usable in-process.
_CUDA_LOADER = "ffi.Module.load_from_bytes.cuda"


@dataclass(frozen=True)
class CudaStatus:
    """What this process can see: a reason when no GPU can be used, else its capability."""

    available: bool
    compute_capability: str | None = None  # "8.0" for device 0
    name: str | None = None
    reason: str | None = None  # why not available (one line)


_NO_DRIVER = "this machine has no NVIDIA driver (libcuda.so.1 not found)"
_ADVICE = "run it on a machine with an NVIDIA GPU and its driver, or compile for a CPU preset (e.g. --target host)"


def load_cuda_runtime() -> None:
    """Make TVM's CUDA runtime available in this process (idempotent).

    Raises DeviceUnavailableError when the NVIDIA driver or the sidecar is missing.
    """
    problem = cuda_runtime_problem()
    if problem is not None:
        raise DeviceUnavailableError(f"{problem}; {_ADVICE}")


def cuda_runtime_problem() -> str | None:
    """Load TVM's CUDA runtime: None once it is loaded, else why it cannot be (one line)."""
    tvm = import_tvm()

    if tvm.get_global_func(_CUDA_LOADER, allow_missing=True) is not None:
        return None
    sidecar = Path(tvm.__file__).resolve().parent / "lib" / _SIDECAR
    if not sidecar.is_file():
        return f"this TVM installation has no CUDA runtime ({sidecar} is missing; install a CUDA-enabled apache-tvm)"
    # The driver first: the dynamic linker names only the first library it misses, and on a
    # machine without a driver that is often libcudart, which would hide the real problem.
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return _NO_DRIVER
    try:
        # RTLD_LOCAL like TVM's own loader: the sidecar only registers functions.
        ctypes.CDLL(str(sidecar), mode=os.RTLD_LOCAL)
    except OSError as e:
        if "libcuda.so" in str(e):
            return _NO_DRIVER
        if "libcudart" in str(e):
            return f"the CUDA runtime library is missing ({e}; e.g. pip install nvidia-cuda-runtime)"
        return f"TVM's CUDA runtime {sidecar} cannot be loaded ({e})"
    if tvm.get_global_func(_CUDA_LOADER, allow_missing=True) is None:  # pragma: no cover
        return f"{sidecar} loaded but registered no CUDA module loader"
    return None


def cuda_status() -> CudaStatus:
    """Whether device cuda:0 can run code here, without raising."""
    problem = cuda_runtime_problem()
    if problem is not None:
        return CudaStatus(False, reason=problem)
    if _stub_driver_loaded:  # this process compiled CUDA code against the stub driver
        return CudaStatus(False, reason=_NO_DRIVER)
    tvm = import_tvm()

    device = tvm.runtime.cuda(0)
    if not device.exist:
        return CudaStatus(
            False,
            reason="the NVIDIA driver reports no GPU (none installed, or CUDA_VISIBLE_DEVICES hides them)",
        )
    return CudaStatus(True, compute_capability=str(device.compute_version), name=str(device.device_name))


def require_cuda(min_compute_capability: str | None, what: str) -> CudaStatus:
    """Raise DeviceUnavailableError unless a CUDA GPU of at least that capability is present.

    what: what needs it, for the message (e.g. "artifacts/mlp-cuda-sm80 (preset cuda-sm80)").
    """
    status = cuda_status()
    if not status.available:
        raise DeviceUnavailableError(f"{what} needs a CUDA GPU, but {status.reason}; {_ADVICE}")
    if min_compute_capability and _version(status.compute_capability) < _version(min_compute_capability):
        raise DeviceUnavailableError(
            f"{what} needs a GPU of compute capability {min_compute_capability} or newer, but "
            f"{status.name} is {status.compute_capability}; compile for a preset with a lower sm_ arch"
        )
    return status


def compute_capability_of_arch(arch: str) -> str:
    """"sm_80" -> "8.0", "sm_90a" -> "9.0", "sm_120" -> "12.0"."""
    digits = "".join(c for c in arch.removeprefix("sm_") if c.isdigit())
    if len(digits) < 2:
        raise ValueError(f"not a CUDA arch: {arch!r}")
    return f"{int(digits[:-1])}.{digits[-1]}"


def _version(text: str | None) -> tuple[int, ...]:
    return tuple(int(x) for x in (text or "0").split("."))
