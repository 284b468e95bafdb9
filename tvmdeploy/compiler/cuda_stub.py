"""A stub NVIDIA driver (libcuda.so.1), for processes that must load TVM's CUDA runtime
on a machine without a GPU.

TVM's CUDA runtime (libtvm_runtime_cuda.so) links the driver, and the CUDA build needs
that runtime loaded to compile kernels ahead of time (see cuda_build.py). This stub
defines the nine driver entry points the sidecar links; each returns
CUDA_ERROR_STUB_LIBRARY, and compiling calls none. NVIDIA ships the same idea as
lib64/stubs/libcuda.so, which minimal toolkit installs (like pip's) lack, so it is built
here with the system C compiler. Never loaded where a real driver is present.

Imports nothing from TVM.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import BuildError
from ..runtime.devices import note_stub_driver_loaded

_STUB_SOURCE = r"""
/* Stub NVIDIA driver: the entry points libtvm_runtime_cuda.so links. Never called while
   compiling; if anything does call one, it fails with CUDA_ERROR_STUB_LIBRARY (34). */
typedef int CUresult;
static const char *kName = "CUDA_ERROR_STUB_LIBRARY";
CUresult cuDeviceGetName(char *n, int l, int d) { return 34; }
CUresult cuFuncSetAttribute(void *f, int a, int v) { return 34; }
CUresult cuGetErrorName(CUresult e, const char **s) { *s = kName; return 0; }
CUresult cuGetErrorString(CUresult e, const char **s) { *s = kName; return 0; }
CUresult cuLaunchKernelEx(const void *c, void *f, void **a, void **x) { return 34; }
CUresult cuModuleGetFunction(void **f, void *m, const char *n) { return 34; }
CUresult cuModuleLoadData(void **m, const void *i) { return 34; }
CUresult cuModuleUnload(void *m) { return 34; }
CUresult cuTensorMapEncodeTiled(void *t, ...) { return 34; }
"""


def driver_present() -> bool:
    """Whether this machine has an NVIDIA driver (or this process already has the stub)."""
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def build_stub_driver(folder: Path) -> Path:
    """Compile the stub into folder/libcuda.so.1 with the system C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise BuildError("building CUDA code without an NVIDIA driver needs a C compiler (cc) for a stub driver")
    source, library = folder / "stub.c", folder / "libcuda.so.1"
    source.write_text(_STUB_SOURCE)
    result = subprocess.run(
        [compiler, "-shared", "-fPIC", "-O1", "-Wl,-soname,libcuda.so.1", "-o", str(library), str(source)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise BuildError(f"building the stub CUDA driver failed: {result.stderr.strip()[-300:]}")
    return library


def load_stub_driver() -> None:
    """Build the stub and load it into this process under the driver's name."""
    with tempfile.TemporaryDirectory(prefix="tvmdeploy-cuda-stub-") as tmp:
        # RTLD_GLOBAL under the driver's soname: the sidecar's DT_NEEDED libcuda.so.1 binds
        # to it. The file may go once it is mapped.
        ctypes.CDLL(str(build_stub_driver(Path(tmp))), mode=os.RTLD_GLOBAL)
    note_stub_driver_loaded()
