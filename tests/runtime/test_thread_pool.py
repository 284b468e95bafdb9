"""The loader sizes TVM's thread pool before it starts (runtime/thread_pool.py).

TVM alone sizes the pool from half the logical CPUs: on a 2-vCPU machine one worker, and
it then pins the calling thread to CPU 0. Each case runs in a fresh process, since the
pool is sized once per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tvmdeploy.runtime.thread_pool import WORKER_SPIN_COUNT, physical_cores

PROBE = r"""
import json, os, sys
from tvmdeploy.runtime.loader import load
before = sorted(os.sched_getaffinity(0))
model = load(sys.argv[1], threads=int(sys.argv[2]))
for inputs in [model.random_inputs(0)] * 3:
    model(*inputs)
print(json.dumps({"before": before, "after": sorted(os.sched_getaffinity(0)),
                  "num_threads": os.environ.get("TVM_NUM_THREADS"),
                  "spin": os.environ.get("TVM_THREAD_POOL_SPIN_COUNT")}))
"""


def _probe(artifact, threads: int, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "TVM_THREAD_POOL_SPIN_COUNT")}
    done = subprocess.run([sys.executable, "-c", PROBE, str(artifact), str(threads)], capture_output=True,
                          text=True, env={**clean, **env}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_physical_cores_within_the_allowed_cpus():
    assert 1 <= physical_cores() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize("threads", [1, 2])
def test_pool_sized_for_the_model_and_caller_not_pinned(digits_artifact, threads):
    seen = _probe(digits_artifact, threads)
    assert seen["num_threads"] == str(max(threads, physical_cores()))
    assert seen["spin"] == str(WORKER_SPIN_COUNT)
    # Threads this process starts later (ONNX Runtime's, numpy's) inherit the caller's CPUs.
    assert seen["after"] == seen["before"]


def test_users_settings_win(digits_artifact):
    seen = _probe(digits_artifact, 2, TVM_NUM_THREADS="3", TVM_THREAD_POOL_SPIN_COUNT="7")
    assert (seen["num_threads"], seen["spin"]) == ("3", "7")


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "150000 100000\n"}, 2),  # cgroup v2, --cpus=1.5
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu.max": "garbage\n"}, None),
    ({}, None),
])
def test_cpu_quota_read_from_the_cgroup(tmp_path, files, expected):
    from tvmdeploy.runtime.thread_pool import cpu_quota

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cpu_quota(tmp_path) == expected
