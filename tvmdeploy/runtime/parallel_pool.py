"""tvmdeploy's thread pool, switched on for a loaded artifact library that carries it.

Libraries tvmdeploy builds for a Linux CPU link compiler/native/parallel_pool.c. TVM
fills each library's `__TVMBackendParallelLaunch` slot (TVM's C backend ABI: every
parallel loop of a kernel calls through it) with its own pool when it loads the library;
`attach` points the slot at the library's own pool instead. Its workers spin while an
inference runs and sleep between inferences, and stop spinning for a while once another
process preempts them (see the C file). Libraries without it (older artifacts, GPU
and object-file exports, a library that uses TVM's parallel barrier) keep TVM's pool.

Against TVM's pool with sleeping workers (the loader's setting for it, thread_pool.py),
same artifacts, 2-vCPU Xeon VM: SqueezeNet 0.85x, MobileNetV2 0.82x, ShuffleNet 0.77x the
latency, ResNet-50 0.97x, BERT layer 1.00x; with a busy process beside it SqueezeNet
4.97 ms against 7.98 ms (TVM's spinning pool collapses there: 160 ms).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from pathlib import Path
from typing import Iterator

# TVMDEPLOY_THREAD_POOL=tvm keeps TVM's pool (with its TVM_THREAD_POOL_SPIN_COUNT).
ENV_CHOICE = "TVMDEPLOY_THREAD_POOL"
LAUNCH_SLOT = "__TVMBackendParallelLaunch"
BARRIER_SLOT = "__TVMBackendParallelBarrier"  # kernels that sync inside a parallel loop


class ParallelPool:
    """The pool inside one loaded library; `inference()` brackets each run."""

    def __init__(self, begin, end, stats, threads: int):
        self._begin, self._end, self._stats = begin, end, stats
        self.threads = threads

    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        self._begin()
        try:
            yield
        finally:
            self._end()

    def stats(self) -> dict[str, int]:
        """Parallel loops launched so far, those run on more than one thread, and the
        inferences left before workers spin again (after a preemption)."""
        out = (ctypes.c_uint64 * 3)()
        self._stats(out)
        return {"launches": out[0], "parallel_launches": out[1], "backoff_left": out[2]}


def attach(library_path: Path, threads: int) -> ParallelPool | None:
    """Point the library TVM just loaded from `library_path` at its own pool (None: the
    library has none, or it cannot be switched safely; TVM's pool stays)."""
    if threads < 2 or not hasattr(os, "RTLD_NOLOAD") or os.environ.get(ENV_CHOICE, "").lower() == "tvm":
        return None
    try:
        # The library TVM loaded, not a second copy: RTLD_NOLOAD only finds a loaded one.
        handle = ctypes.CDLL(str(library_path), mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except OSError:
        return None
    try:
        return _switch(handle, threads)
    finally:
        # TVM's handle keeps the library loaded (should TVM unload it, the library's
        # destructor stops its workers first); this one must not keep it alive.
        _dlclose(handle)


def _switch(handle, threads: int) -> ParallelPool | None:
    try:
        launch, configure = handle.tvmdeploy_parallel_launch, handle.tvmdeploy_pool_configure
        begin, end, stats = handle.tvmdeploy_pool_begin, handle.tvmdeploy_pool_end, handle.tvmdeploy_pool_stats
        slot = ctypes.c_void_p.in_dll(handle, LAUNCH_SLOT)
    except (AttributeError, ValueError):
        return None
    if _has_symbol(handle, BARRIER_SLOT):
        return None  # the pool implements no barrier
    configure.argtypes, configure.restype = [ctypes.c_int], ctypes.c_int
    begin.argtypes = end.argtypes = []
    begin.restype = end.restype = None
    stats.argtypes, stats.restype = [ctypes.POINTER(ctypes.c_uint64)], None
    # Keep the function objects (not the handle): they stay valid while TVM keeps the library.
    granted = configure(int(threads))
    slot.value = ctypes.cast(launch, ctypes.c_void_p).value
    return ParallelPool(begin, end, stats, granted)


def _has_symbol(handle, name: str) -> bool:
    try:
        ctypes.c_void_p.in_dll(handle, name)
        return True
    except ValueError:
        return False


def _dlclose(handle) -> None:
    try:
        import _ctypes

        _ctypes.dlclose(handle._handle)
    except (ImportError, AttributeError, OSError):  # pragma: no cover (not Linux)
        pass
