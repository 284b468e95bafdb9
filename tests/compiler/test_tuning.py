"""Tuning with MetaSchedule into the per-target cache: records, reuse, kill safety,
concurrency, export/import. Counts and numerics only, never wall-clock time.

Each tuning run costs ~30-60 s on 2 cores (MetaSchedule's setup dominates), so the
models are tiny and the budgets a handful of trials.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import MODELS, ort_run

from tvmdeploy import compile_model
from tvmdeploy.errors import TvmDeployError
from tvmdeploy.runtime import load
from tvmdeploy.compiler.tuning.cache import CACHE_LAYOUT_VERSION, TargetCache, import_records, ledger_says_done
from tvmdeploy.compiler.tuning.records import RECORD_FILE, WORKLOAD_FILE, read_database
from tvmdeploy.compiler.tuning.tuner import TuningBudget

MLP = MODELS / "mlp.onnx"


def _cli(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "tvmdeploy.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _target_folder(cache_root):
    folders = list((cache_root / "tuning").glob(f"v{CACHE_LAYOUT_VERSION}/tvm-*/llvm-*"))
    assert len(folders) == 1, folders
    return folders[0]


def _loads_in_metaschedule(folder) -> int:
    from tvmdeploy.compiler._tvm import ms

    db = ms.database.JSONDatabase(
        path_workload=str(folder / WORKLOAD_FILE), path_tuning_record=str(folder / RECORD_FILE), allow_missing=False
    )
    return len(db)


def test_tune_compile_then_reuse_with_zero_trials(tmp_path):
    cache = tmp_path / "cache"
    first = compile_model(MLP, "host", output_dir=tmp_path / "a", tune=TuningBudget(trials=3), cache_dir=cache)
    tuning = first.manifest.extra["tuning"]
    assert tuning["trials"] == 3 and tuning["tasks_from_cache"] == 0
    assert len(tuning["tasks"]) == 3 and all(t["source"] == "tuned" for t in tuning["tasks"])
    assert tuning["kernels_scheduled_from_cache"] == 3
    assert tuning["estimated_ms"] > 0 and tuning["measured_ms"] > 0
    assert "MetaScheduleApplyDatabase" in first.manifest.passes
    folder = _target_folder(cache)
    assert len(read_database(folder).records) >= 3 and _loads_in_metaschedule(folder) >= 3

    model = load(first.artifact_dir)
    x = np.random.default_rng(3).standard_normal((1, 64)).astype(np.float32)
    np.testing.assert_allclose(model(x)[0], ort_run(MLP, {"x": x})[0], rtol=1e-3, atol=1e-4)

    second = compile_model(MLP, "host", output_dir=tmp_path / "b", tune=TuningBudget(trials=3), cache_dir=cache)
    again = second.manifest.extra["tuning"]
    assert again["trials"] == 0 and again["tasks_from_cache"] == 3 and again["stopped_by"] == "nothing to tune"
    assert again["kernels_scheduled_from_cache"] == 3

    # Without --tune the cache is still used, and a different target has its own cache.
    plain = compile_model(MLP, "host", output_dir=tmp_path / "c", cache_dir=cache)
    assert plain.manifest.extra["tuning"]["kernels_scheduled_from_cache"] == 3
    other = compile_model(MLP, "x86_64", output_dir=tmp_path / "d", cache_dir=cache)
    assert other.manifest.extra["tuning"]["kernels_scheduled_from_cache"] == 0


def test_sigterm_midway_leaves_a_loadable_cache_that_the_next_run_extends(tmp_path):
    cache = tmp_path / "cache"
    model = MODELS / "conv_bn_relu.onnx"  # 4 tunable kernels
    budget = ("--trials", "16", "--trials-per-task", "4")  # one batch of 4 per kernel (~10 s a candidate here)
    proc = _cli("tune", model, *budget, "--cache-dir", cache)
    deadline = time.monotonic() + 300
    records = []
    while proc.poll() is None and time.monotonic() < deadline:
        folders = list((cache / "tuning").glob(f"v{CACHE_LAYOUT_VERSION}/tvm-*/llvm-*"))
        records = read_database(folders[0]).records if folders else []
        if records:
            break
        time.sleep(0.5)
    assert proc.poll() is None and records, "tuning ended before any record landed"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err

    folder = _target_folder(cache)
    before = read_database(folder)
    assert before.records and before.skipped_lines == 0
    assert _loads_in_metaschedule(folder) >= len(before.records)
    covered = before.workload_hashes_with_records()

    # The same budget again: the killed run's kernels are continued, not skipped.
    result = compile_model(
        model, "host", output_dir=tmp_path / "art", tune=TuningBudget(trials=16, trials_per_task=4), cache_dir=cache
    )
    tuning = result.manifest.extra["tuning"]
    assert 0 < tuning["trials"] < 16
    after = read_database(folder)
    assert len(after.records) > len(before.records)
    assert covered <= after.workload_hashes_with_records()
    # The packed fp32 convs were tuned in their micro-kernel space (kernels/fp32_schedule.py),
    # not MetaSchedule's generic multi-level tiling, and the tuned artifact is right.
    workloads = [json.loads(line) for line in (folder / WORKLOAD_FILE).read_text().splitlines()]
    packed = {i for i, (_, module) in enumerate(workloads) if b"conv2d_fp32_packed" in base64.b64decode(module)}
    conv_records = [line for line in (folder / RECORD_FILE).read_text().splitlines() if json.loads(line)[0] in packed]
    assert packed and conv_records
    # No multi-level tiling annotation; the analytic default is one fixed point of the space
    # (measured once), the other records sample the micro-kernel's tile.
    assert all("tiling_structure" not in line for line in conv_records)
    assert any("SamplePerfectTile" in line for line in conv_records)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    (want,) = ort_run(model, {"image": x})
    np.testing.assert_allclose(load(result.artifact_dir)(image=x)[0], want, rtol=1e-4, atol=1e-4)


def test_two_processes_tuning_one_cache(tmp_path):
    cache = tmp_path / "cache"
    procs = [_cli("tune", MLP, "--trials", "3", "--cache-dir", cache) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
        # MetaSchedule's per-kernel log announcements stay in its log files.
        assert "Logging directory" not in out + err
    folder = _target_folder(cache)
    records = read_database(folder)
    assert records.skipped_lines == 0 and len(records.records) >= 3
    assert _loads_in_metaschedule(folder) == len(records.records)
    assert not list((folder / "sessions").iterdir())


def test_export_import_into_an_empty_cache_means_zero_trials(tmp_path):
    source, empty = tmp_path / "source", tmp_path / "empty"
    compile_model(MLP, "host", output_dir=tmp_path / "a", tune=TuningBudget(trials=3), cache_dir=source)
    exported = tmp_path / "records.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tvmdeploy.cli", "tuning", "export", "--target", "host", "-o", exported, "--cache-dir", source],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(exported.read_text())["format"] == "tvmdeploy-tuning-records"

    from tvmdeploy.compiler._tvm import TVM_VERSION

    target_cache, total, added = import_records(exported, TVM_VERSION, empty)
    assert total == added >= 3
    result = compile_model(MLP, "host", output_dir=tmp_path / "b", tune=TuningBudget(trials=3), cache_dir=empty)
    assert result.manifest.extra["tuning"]["trials"] == 0
    assert result.manifest.extra["tuning"]["kernels_scheduled_from_cache"] == 3
    assert import_records(exported, TVM_VERSION, empty)[2] == 0  # importing twice adds nothing


def test_import_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(TvmDeployError, match=r"bad.json: not a tuning-records file"):
        import_records(bad, "0.27.0.post1", tmp_path)
    bad.write_text(json.dumps({"format": "tvmdeploy-tuning-records", "version": 1, "tvm": "0.26.0", "target": {}}))
    with pytest.raises(TvmDeployError, match=r"made with TVM 0.26.0, this is TVM 0.27.0.post1"):
        import_records(bad, "0.27.0.post1", tmp_path)
    with pytest.raises(TvmDeployError, match=r"nothing.json: no such file"):
        import_records(tmp_path / "nothing.json", "0.27.0.post1", tmp_path)


def test_truncated_lines_from_a_killed_writer_are_skipped(tmp_path):
    folder = tmp_path / "db"
    folder.mkdir()
    (folder / WORKLOAD_FILE).write_text('["1","AAAA"]\n["2","BBBB"]\n')
    (folder / RECORD_FILE).write_text('[0,[[[],[]],[0.001],{"kind":"llvm"},[]]]\n[1,[[[],[]],[0.002],{"kind":"llvm"},[]]]\n[1,[[[],[]],[0.0')
    records = read_database(folder)
    assert len(records.records) == 2 and records.skipped_lines == 1


def test_cache_is_per_target_and_tvm_version(tmp_path):
    a = TargetCache.open({"kind": "llvm", "mcpu": "haswell", "mtriple": "x86_64-linux-gnu"}, "0.27.0", tmp_path)
    b = TargetCache.open({"kind": "llvm", "mcpu": "znver4", "mtriple": "x86_64-linux-gnu"}, "0.27.0", tmp_path)
    c = TargetCache.open({"kind": "llvm", "mcpu": "haswell", "mtriple": "x86_64-linux-gnu"}, "0.28.0", tmp_path)
    assert len({a.folder, b.folder, c.folder}) == 3
    assert "haswell" in a.folder.name and "tvm-0.27.0" in str(a.folder)


def test_default_cache_location_honours_the_environment(tmp_path, monkeypatch):
    from tvmdeploy.folders import default_cache_root

    monkeypatch.setenv("TVMDEPLOY_CACHE_DIR", str(tmp_path / "x"))
    assert default_cache_root() == tmp_path / "x"
    monkeypatch.delenv("TVMDEPLOY_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == tmp_path / "xdg" / "tvmdeploy"
    assert os.environ.get("TVMDEPLOY_CACHE_DIR") is None


@pytest.mark.parametrize("model", ["conv_bn_relu.onnx", "transformer_block.onnx"])
def test_each_kernels_default_is_measured_and_its_record_replays_it_exactly(model, tmp_path):
    """Tuning first measures each kernel's untuned default with its own builder and runner
    and commits it as a record, so the best record is never a schedule slower than the
    default (packed convs, row kernels, analytic matmuls, generic samples alike); the
    record, read back from the cache, replays to exactly the default schedule."""
    from tvmdeploy.compiler import _tvm
    from tvmdeploy.compiler.frontend import import_model
    from tvmdeploy.compiler.lowering import lower
    from tvmdeploy.compiler.optimize import optimize_graph
    from tvmdeploy.compiler.presets import load_preset, resolve_preset
    from tvmdeploy.compiler.tuning.default_schedule import apply_default_schedules
    from tvmdeploy.compiler.tuning.tuner import (
        TaskReport, _Deadline, _Measurer, apply_cached, load_database_healing, measure_defaults,
    )

    _, target = resolve_preset(load_preset("host"))
    fused = lower(optimize_graph(import_model(MODELS / model).mod)[0], target)[0]
    cache = TargetCache.open(_tvm.target_to_dict(target), _tvm.TVM_VERSION, tmp_path / "cache")
    tasks = _tvm.ms.relax_integration.extract_tasks(fused, target)
    reports = [TaskReport(t.task_name, int(t.weight), 0.0, "untuned") for t in tasks]
    with cache.session() as session:
        database, _ = load_database_healing(session, read_database(session))
        committed = measure_defaults(list(zip(tasks, reports)), target, database, _Measurer(target), _Deadline(None))
        cache.merge(read_database(session))
    assert committed == len(tasks) >= 4, [r.name for r in reports if r.default_ms is None]
    assert all(r.default_ms is not None and r.default_ms > 0 and r.best_ms == r.default_ms for r in reports)

    def kernels(mod):
        # Compared as printed, less what the two paths set differently: the function's
        # name and attributes, and the layout-rewrite mark (True, or 1 once through JSON).
        def text(func):
            lines = [line for line in func.script().splitlines() if "T.func_attr" not in line and "@T.prim_func" not in line]
            return re.sub(r"^def \w+\(", "def kernel(", "\n".join(lines), flags=re.M).replace('preproc": True', 'preproc": 1')

        return {gv.name_hint: text(f) for gv, f in mod.functions.items() if isinstance(f, _tvm.PrimFunc)}

    replayed, count = apply_cached(fused, target, cache)
    assert count == committed
    defaults = kernels(apply_default_schedules(fused, target)[0])
    assert kernels(replayed) == defaults


_RUNNER_PROBE = """
import json, os
from tvmdeploy.compiler._tvm import tvm
from tvmdeploy.compiler.tuning.tuner import _Measurer

def probe():
    import os
    import tvm
    return tvm.get_global_func("runtime.NumThreads")(), os.environ.get("TVM_THREAD_POOL_SPIN_COUNT")

target = tvm.target.Target({"kind": "llvm", "num-cores": 3})
print(json.dumps(_Measurer(target).runner.pool.submit(probe).result()))
"""


def test_tuning_runner_measures_on_the_thread_pool_an_artifact_gets():
    """Left alone, TVM gives the runner's worker half the logical CPUs (one thread on a
    2-vCPU machine) and 300000 spin rounds; the artifact runs the target's cores with
    sleeping workers. The runner's worker must match the artifact."""
    from tvmdeploy.runtime.thread_pool import WORKER_SPIN_COUNT

    clean = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS", "TVM_THREAD_POOL_SPIN_COUNT")}
    done = subprocess.run([sys.executable, "-c", _RUNNER_PROBE], env=clean, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    threads, spin = json.loads(done.stdout.strip().splitlines()[-1])
    assert threads == 3  # not a count TVM would pick by itself on a 2- or 4-CPU machine
    assert spin == str(WORKER_SPIN_COUNT)


def test_a_time_budget_alone_tunes_until_the_time_is_spent(tmp_path, capfd):
    from tvmdeploy.cli.main import _budget, _parser
    from tvmdeploy.compiler.tuning.budget import DEFAULT_TRIALS, TIMED_TRIALS_PER_TASK

    assert TuningBudget().trials == DEFAULT_TRIALS and TuningBudget(trials=5, minutes=1).trials == 5
    timed = TuningBudget(minutes=60)
    assert timed.trials is None and timed.per_task(28) == TIMED_TRIALS_PER_TASK
    for argv, trials in ((["tune", "m.onnx", "--time-budget", "60"], None), (["tune", "m.onnx"], DEFAULT_TRIALS),
                         (["compile", "m.onnx", "--time-budget", "60", "--tune"], None),
                         (["tune", "m.onnx", "--time-budget", "60", "--trials", "7"], 7)):
        args = _parser().parse_args(argv)
        assert _budget(args.trials if argv[0] == "tune" else args.tune_trials, args).trials == trials, argv
    assert _budget(None, _parser().parse_args(["tune", "m.onnx", "--patience", "0"])).patience == 0
    for minutes in (0, -1, float("nan"), float("inf")):  # nan and inf would never end a time-only run
        with pytest.raises(TvmDeployError, match="--time-budget must be a finite number of minutes > 0"):
            TuningBudget(minutes=minutes)

    # A real 12-second run on the MLP is sized by the clock, which ends it (MetaSchedule's
    # setup alone may take that long here: no trial count is asserted).
    result = compile_model(MLP, "host", output_dir=tmp_path / "a", tune=TuningBudget(minutes=0.2), cache_dir=tmp_path / "c")
    tuning = result.manifest.extra["tuning"]
    assert tuning["stopped_by"] == "time budget" and tuning["budget"]["trials"] is None
    assert "for 0.2 min" in capfd.readouterr().err


def test_a_time_budget_ends_early_once_every_kernels_space_is_exhausted(tmp_path):
    """A 1x1 conv on one pixel and one vector of channels: its micro-kernel space has a
    handful of points. Once the search finds nothing unmeasured the kernel is finished,
    instead of the search being asked again until the clock runs out."""
    weight = np.random.default_rng(0).standard_normal((16, 16, 1, 1)).astype("float32")
    path = _conv_model(tmp_path / "pixel_conv.onnx", weight, [1, 16, 1, 1], relu=True)
    budget = TuningBudget(minutes=10)
    result = compile_model(path, "host", output_dir=tmp_path / "a", tune=budget, cache_dir=tmp_path / "c")
    tuning = result.manifest.extra["tuning"]
    assert tuning["stopped_by"] == "search space exhausted", tuning["stopped_by"]
    assert 0 < tuning["trials"] < 16
    # Finished kernels are done in the ledger: the same budget again tunes nothing.
    again = compile_model(path, "host", output_dir=tmp_path / "b", tune=budget, cache_dir=tmp_path / "c")
    assert again.manifest.extra["tuning"]["stopped_by"] == "nothing to tune"
    x = np.random.default_rng(1).standard_normal((1, 16, 1, 1)).astype("float32")
    np.testing.assert_allclose(load(again.artifact_dir)(x=x)[0], ort_run(path, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_a_time_budget_ends_once_every_kernel_has_converged(tmp_path):
    """A matmul + tanh by a constant weight per batch (no packed kernel takes it:
    MetaSchedule's generic space, which no search exhausts), onto 40 columns. Once `patience` of its trials bring no 1 % gain its search
    ends, instead of the clock being spent on it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Tanh", ["m"], ["y"])], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 24, 96])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 24, 40])],
        [numpy_helper.from_array((rng.standard_normal((2, 96, 40)) / 10).astype("float32"), "w")],
    )
    path = tmp_path / "matmul_tanh.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    budget = TuningBudget(minutes=10, patience=16)
    result = compile_model(path, "host", output_dir=tmp_path / "a", tune=budget, cache_dir=tmp_path / "c")
    tuning = result.manifest.extra["tuning"]
    assert tuning["stopped_by"] == "converged", tuning["stopped_by"]
    assert tuning["budget"]["patience"] == 16 and tuning["trials"] >= 16
    [task] = tuning["tasks"]
    assert task["source"] == "tuned" and task["best_ms"] <= task["default_ms"]
    again = compile_model(path, "host", output_dir=tmp_path / "b", tune=budget, cache_dir=tmp_path / "c")
    assert again.manifest.extra["tuning"]["stopped_by"] == "nothing to tune"
    # The ledger keeps the patience it converged under: a run asking more tunes it on.
    [entry] = json.loads((Path(tuning["cache_folder"]) / "ledger.json").read_text()).values()
    assert entry["converged_patience"] == 16
    per_task = entry["per_task"]
    assert ledger_says_done(entry, per_task, 16) and ledger_says_done(entry, per_task, 8)
    assert not ledger_says_done(entry, per_task, 64) and not ledger_says_done(entry, per_task, 0)
    x = rng.standard_normal((2, 24, 96)).astype("float32")
    np.testing.assert_allclose(load(again.artifact_dir)(x=x)[0], ort_run(path, {"x": x})[0], rtol=1e-5, atol=1e-5)
    for patience in (-1, 1.5):
        with pytest.raises(TvmDeployError, match="--patience must be a whole number of trials >= 0"):
            TuningBudget(minutes=1, patience=patience)


@pytest.mark.parametrize("entry", [["done"], {"state": "done", "per_task": "64"}, {"state": "started", "per_task": 64},
                                   {"state": "done", "per_task": 64, "converged_patience": "128"}, None])
def test_a_ledger_entry_that_is_not_a_finished_run_is_tuned_again(entry):
    """The ledger is read from disk like any file: an entry of the wrong shape means 'tune it'."""
    assert not ledger_says_done(entry, 64, 128)
    assert ledger_says_done({"state": "done", "per_task": 64}, 64, 0)  # exhausted or full budget: done


def test_winograd_transforms_are_left_to_their_one_schedule(tmp_path):
    """Tuning searches the grouped conv between the transforms, never the transforms."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((16, 16, 3, 3)) / 12).astype("float32")
    path = _conv_model(tmp_path / "conv3x3.onnx", weight, [1, 16, 12, 12], pads=[1, 1, 1, 1])
    result = compile_model(path, "host", output_dir=tmp_path / "a", tune=TuningBudget(trials=4), cache_dir=tmp_path / "c")
    assert result.reports.lowering.winograd_conv2d == 1
    tasks = {t["name"]: t for t in result.manifest.extra["tuning"]["tasks"]}
    transforms = [t for name, t in tasks.items() if "winograd" in name]
    assert len(transforms) == 2 and all(t["source"] == "default" and t["trials"] == 0 for t in transforms)
    assert any("conv2d_fp32_packed" in name and t["trials"] > 0 for name, t in tasks.items())
    x = rng.standard_normal((1, 16, 12, 12)).astype("float32")
    np.testing.assert_allclose(load(result.artifact_dir)(x=x)[0], ort_run(path, {"x": x})[0], rtol=1e-4, atol=1e-4)


def _conv_model(path, weight, shape, relu=False, **conv_attrs):
    """A one-Conv ONNX model (same-size output), optionally followed by a Relu."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Conv", ["x", "w"], ["c" if relu else "y"], **conv_attrs)]
    nodes += [helper.make_node("Relu", ["c"], ["y"])] if relu else []
    graph = helper.make_graph(
        nodes, path.stem, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], [numpy_helper.from_array(weight, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path
