"""TVM's CPU thread pool, sized and configured for a loaded artifact.

TVM sizes its worker pool once, when the pool starts, from TVM_NUM_THREADS, else from
half the logical CPUs (it assumes two hyperthreads per core). On a 2-vCPU machine that
is one worker, which `runtime.config_threadpool` cannot add to: a model loaded with 2
threads ran on one core (light SqueezeNet 6.4 ms instead of 3.4 ms on a 2-core Xeon),
and TVM pinned the calling thread to CPU 0, so threads the process started afterwards
(ONNX Runtime's, numpy's) were confined to that CPU too.
"""

from __future__ import annotations

import os
from pathlib import Path

# sched_yield rounds a TVM worker spins through before it sleeps, waiting for the next
# kernel. TVM's default (300000) kept a worker busy ~70 ms of CPU after every run; 0 made
# every kernel launch wake the workers (light SqueezeNet 4.03 ms, ResNet-50 30.2 ms on a
# 2-core Xeon, against 3.36 and 28.2 ms with 1000). 1000 rounds cover the gaps between a
# model's kernels and end well under a millisecond after its last one.
WORKER_SPIN_COUNT = 1000


def configure_thread_pool(tvm, nthreads: int) -> None:
    """nthreads: the model's threads, 0 for one per physical core.

    The environment is read when TVM's pool starts, so the sizes only take effect if this
    process has not run a parallel TVM kernel yet; values the user set win.
    """
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", str(WORKER_SPIN_COUNT))
    os.environ.setdefault("TVM_NUM_THREADS", str(max(int(nthreads), physical_cores())))
    if nthreads:
        config = tvm.get_global_func("runtime.config_threadpool", allow_missing=True)
        if config is not None:
            config(0, int(nthreads))  # 0: big cores first (the default affinity mode)


def physical_cores() -> int:
    """Cores (not hyperthreads) among the CPUs this process may run on."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (not Linux)
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topology / "physical_package_id").read_text().strip() + ":" + (topology / "core_id").read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))
