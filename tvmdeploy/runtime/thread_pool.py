"""TVM's CPU thread pool, sized and configured for a loaded artifact.

Libraries tvmdeploy builds for a Linux CPU run their parallel loops on their own pool
instead (parallel_pool.py); TVM's serves older artifacts, TVMDEPLOY_THREAD_POOL=tvm,
and tuning's measurements.

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
# kernel. Measured on a 2-core Xeon: TVM's default (300000) keeps a worker busy ~70 ms of
# CPU after every run; 1000 was 5-35 % faster than 0 on an idle machine (SqueezeNet 3.36
# against 4.03 ms alone; 1.24x against 1.56x ONNX Runtime in one bench), but with another process busy on the cores every round of spinning
# hands the core away for a whole time slice: SqueezeNet 140 ms instead of 5.7 ms, the
# digits CNN 8 ms instead of 0.035 ms. Short spins too: with one busy process beside it,
# SqueezeNet ran 160-164 ms at 10, 30 and 100 rounds (6.5 ms at 0; idle 3.4 vs 4.0 ms).
# 0 (workers sleep at once, woken per kernel) is the default that never collapses; set
# TVM_THREAD_POOL_SPIN_COUNT yourself on a dedicated core.
WORKER_SPIN_COUNT = 0


# Runtime threads an artifact may ask for (manifest or caller): 65536 made thread
# creation fail inside TVM's pool, which aborts the process (std::terminate).
MAX_THREADS = 1024


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


def cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """CPUs' worth of time this process's cgroup may use per period, rounded up (None:
    no quota). A container started with --cpus=1 on a 2-CPU host sees both CPUs but is
    throttled after one CPU-second per second: a second spinning worker only gets it
    throttled sooner."""
    for quota_file, period_file in (("cpu.max", None), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us"),
                                    ("cpu,cpuacct/cpu.cfs_quota_us", "cpu,cpuacct/cpu.cfs_period_us")):
        try:
            fields = (root / quota_file).read_text().split()
            period = int(fields[1]) if period_file is None else int((root / period_file).read_text().split()[0])
            if fields[0] == "max" or int(fields[0]) <= 0 or period <= 0:
                return None
            return max(1, -(-int(fields[0]) // period))
        except (OSError, ValueError, IndexError):
            continue
    return None


def usable_cpus() -> int:
    """CPUs this process may run on, capped at its cgroup's quota."""
    return min(len(os.sched_getaffinity(0)), cpu_quota() or 1 << 16)

