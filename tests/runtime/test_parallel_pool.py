"""tvmdeploy's thread pool inside host libraries (compiler/native/parallel_pool.c, switched
on by runtime/parallel_pool.py): it runs the kernels' parallel loops, gives the same
numbers as TVM's pool, survives fork and concurrent callers, sleeps between inferences,
and stops spinning when another process competes for its CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import ort_run
from tvmdeploy import compile_model
from tvmdeploy.runtime.loader import load
from tvmdeploy.runtime.thread_pool import usable_cpus

# Its convolutions are big enough to run parallel (the residual block's 16x16 3x3 convs
# became Winograd kernels small enough for one thread, and a library without a parallel
# loop has no pool to switch on).
MODEL = Path(__file__).parents[1] / "models" / "conv_bn_relu.onnx"
needs_two_cpus = pytest.mark.skipif(usable_cpus() < 2, reason="the pool needs 2 CPUs (and a quota of 2)")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pool") / "conv_bn_relu"
    compile_model(MODEL, "host", output_dir=out, cache_dir=out.parent / "cache")
    return out


def _run_probe(code: str, *args: str, env: dict | None = None) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_manifest_names_the_pool_the_library_carries(artifact):
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["extra"]["build"]["thread_pool"] == "tvmdeploy"


@needs_two_cpus
def test_parallel_loops_run_on_the_pool_and_match_onnxruntime(artifact):
    model = load(artifact, threads=2)
    assert model._pool is not None and model._pool.threads == 2
    inputs = model.random_inputs(0)
    outputs = model(*inputs)
    stats = model._pool.stats()
    assert stats["parallel_launches"] >= 1
    expected = ort_run(MODEL, dict(zip([s.name for s in model.inputs], inputs)))
    np.testing.assert_allclose(outputs[0], expected[0], rtol=1e-4, atol=1e-4)


PROBE = r"""
import json, sys
import numpy as np
from tvmdeploy.runtime.loader import load
model = load(sys.argv[1], threads=2)
out = model(*model.random_inputs(0))[0]
print(json.dumps({"pool": model._pool is not None, "out": out.ravel().tolist()}))
"""


@needs_two_cpus
def test_same_numbers_as_tvms_pool(artifact):
    ours = _run_probe(PROBE, str(artifact))
    tvms = _run_probe(PROBE, str(artifact), env={"TVMDEPLOY_THREAD_POOL": "tvm"})
    assert ours["pool"] and not tvms["pool"]
    # Each output element is computed whole by one thread either way: bit-identical.
    assert ours["out"] == tvms["out"]


FORK = r"""
import json, os, sys
import numpy as np
from tvmdeploy.runtime.loader import load
model = load(sys.argv[1], threads=2)
inputs = model.random_inputs(0)
parent = model(*inputs)[0]  # the pool's workers run in the parent
read, write = os.pipe()
pid = os.fork()
if pid == 0:  # only the forking thread exists here: the child starts its own workers
    out = model(*inputs)[0]
    os.write(write, json.dumps({"equal": bool(np.array_equal(out, parent)), "parallel": model._pool.stats()["parallel_launches"]}).encode())
    os._exit(0)
os.close(write)
child = json.loads(os.read(read, 1 << 16))
_, status = os.waitpid(pid, 0)
print(json.dumps({**child, "status": status}))
"""


@needs_two_cpus
def test_a_forked_child_runs_the_model(artifact):
    seen = _run_probe(FORK, str(artifact))
    assert seen["status"] == 0 and seen["equal"]
    assert seen["parallel"] >= 2  # the parent's launch and the child's


@needs_two_cpus
def test_concurrent_callers_on_separate_models(artifact):
    models = [load(artifact, threads=2) for _ in range(3)]
    inputs = models[0].random_inputs(0)
    expected = models[0](*inputs)[0]
    results, errors = [], []

    def work(model):
        try:
            for _ in range(20):
                results.append(np.array_equal(model(*inputs)[0], expected))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 60 and all(results)


IDLE = r"""
import json, os, sys, time
from tvmdeploy.runtime.loader import load
model = load(sys.argv[1], threads=2)
inputs = model.random_inputs(0)
for _ in range(50):
    model(*inputs)
tasks = len(os.listdir("/proc/self/task"))
start = os.times()
time.sleep(1.0)
end = os.times()
print(json.dumps({"cpu_seconds_idle": (end.user - start.user) + (end.system - start.system),
                  "parallel": model._pool.stats()["parallel_launches"], "tasks": tasks}))
"""


@needs_two_cpus
def test_workers_sleep_between_inferences(artifact):
    seen = _run_probe(IDLE, str(artifact))
    assert seen["parallel"] >= 50
    # TVM's spinning pool (its default spin count) burned ~70 ms of CPU after every run.
    assert seen["cpu_seconds_idle"] < 0.05


BUSY = r"""
import json, os, subprocess, sys, time
from tvmdeploy.runtime.loader import load
model = load(sys.argv[1], threads=2)
inputs = model.random_inputs(0)
expected = model(*inputs)[0]
worker_cpu = sorted(os.sched_getaffinity(0))[1]  # the pool's worker runs on the 2nd CPU
busy = subprocess.Popen([sys.executable, "-c", "import os; os.sched_setaffinity(0, {%d})\nwhile True: pass" % worker_cpu])
try:
    time.sleep(0.5)
    backed_off, equal, deadline = 0, True, time.monotonic() + 60
    while not backed_off and time.monotonic() < deadline:
        equal &= bool((model(*inputs)[0] == expected).all())
        backed_off = model._pool.stats()["backoff_left"]
finally:
    busy.kill()
print(json.dumps({"backed_off": backed_off, "equal": equal}))
"""


@needs_two_cpus
def test_workers_stop_spinning_when_another_process_wants_their_cpu(artifact):
    seen = _run_probe(BUSY, str(artifact))
    assert seen["equal"]
    assert seen["backed_off"] > 0
