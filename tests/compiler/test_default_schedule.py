"""Default CPU schedules: untuned kernels are tiled, parallel and vectorized, and still correct."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MODELS, ort_run

from tvmdeploy import compile_model
from tvmdeploy.runtime import load


def _kernels(model):
    from tvmdeploy.compiler.frontend import import_model
    from tvmdeploy.compiler.optimize import optimize_graph
    from tvmdeploy.compiler.presets import load_preset, resolve_preset
    from tvmdeploy.compiler.lowering import lower_for_tuning

    _, target = resolve_preset(load_preset("host"))
    mod, _ = optimize_graph(import_model(model).mod)
    return lower_for_tuning(mod), target


def test_every_conv_kernel_gets_a_parallel_vectorized_schedule():
    import tvm

    from tvmdeploy.compiler.tuning.default_schedule import _too_small_for_threads, apply_default_schedules

    fused, target = _kernels(MODELS / "conv_bn_relu.onnx")
    kernels = {gv.name_hint for gv, f in fused.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    scheduled, count = apply_default_schedules(fused, target)
    assert count == len(kernels)
    for gv, func in scheduled.functions.items():
        if gv.name_hint.startswith("fused_conv2d"):
            text = func.script()
            assert func.attrs["tirx.is_scheduled"]
            assert "T.vectorized" in text, gv.name_hint
            # Parallel unless too small for a second thread to pay for waking it.
            assert ("T.parallel" in text) != _too_small_for_threads(fused[gv.name_hint]), gv.name_hint
    # The input module is left as it was.
    assert not any(
        f.attrs is not None and f.attrs.get("tirx.is_scheduled") for f in fused.functions.values() if isinstance(f, tvm.tirx.PrimFunc)
    )


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_default_schedule_never_recomputes_a_reduction_per_element(seed):
    """A sampled compute location can put softmax's sum inside the loop over its output
    (1000 classes: the sum redone 1000 times, 3.1 ms instead of 3 us). The default keeps
    every moved block at the root: the scheduled kernel does the unscheduled one's work."""
    import tvm
    from pass_helpers import relax_main
    from tvm import relax

    from tvmdeploy.compiler import _tvm
    from tvmdeploy.compiler.presets import load_preset, resolve_preset
    from tvmdeploy.compiler.tuning.default_schedule import apply_default_schedules

    _, target = resolve_preset(load_preset("host"))
    mod = relax.transform.LegalizeOps()(relax_main(lambda bb, x: relax.op.nn.softmax(x), (1, 1000)))
    scheduled, count = apply_default_schedules(mod, target, seed=seed)
    assert count == 1
    (name,) = [gv for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    before = _tvm.estimate_flops(tvm.ir.IRModule({"main": mod[name]}))
    after = _tvm.estimate_flops(tvm.ir.IRModule({"main": scheduled[name]}))
    assert after <= 1.5 * before, (before, after)


def test_gpu_targets_get_dlight_schedules():
    import tvm

    from tvmdeploy.compiler.presets import load_preset, resolve_preset
    from tvmdeploy.compiler.tuning.default_schedule import apply_default_schedules

    fused, _ = _kernels(MODELS / "mlp.onnx")
    _, cuda = resolve_preset(load_preset("cuda-sm80"))
    scheduled, count = apply_default_schedules(fused, cuda)
    kernels = [(gv, f) for gv, f in scheduled.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert count == len(kernels) == 3
    for gv, func in kernels:  # bound to GPU threads: no "Did you forget to bind?" at codegen
        assert func.attrs["tirx.is_scheduled"] and "threadIdx.x" in func.script(), gv.name_hint


def test_default_scheduled_artifact_matches_onnxruntime(tmp_path):
    result = compile_model(MODELS / "conv_bn_relu.onnx", "host", output_dir=tmp_path / "a", cache_dir=tmp_path / "c")
    assert result.manifest.extra["tuning"]["kernels_default_schedule"] >= 4
    assert "DefaultCPUSchedules" in result.manifest.passes
    x = np.random.default_rng(5).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(load(result.artifact_dir)(x)[0], ort_run(MODELS / "conv_bn_relu.onnx", {"image": x})[0], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("thresholds", [None, (1e5, 128 * 1024)])
def test_kernels_too_small_for_threads_get_a_single_thread_schedule(thresholds, monkeypatch):
    """Waking the thread pool costs more than tiny kernels can gain from a second core.
    With the shipped thresholds every digits kernel is small; lower ones (the previous
    1e5 FLOPs / 128 KiB) put its convs on both sides."""
    import tvm

    from tvmdeploy.compiler.tuning import default_schedule
    from tvmdeploy.compiler.tuning.default_schedule import _too_small_for_threads, apply_default_schedules
    from tvmdeploy.data import DIGITS_CNN

    if thresholds is not None:
        monkeypatch.setattr(default_schedule, "SERIAL_BELOW_FLOPS", thresholds[0])
        monkeypatch.setattr(default_schedule, "SERIAL_BELOW_BYTES", thresholds[1])

    fused, target = _kernels(DIGITS_CNN)
    if int(target.attrs["num-cores"]) < 2:
        pytest.skip("one core: every kernel is single-thread anyway")
    scheduled, _ = apply_default_schedules(fused, target)
    small = big = 0
    for gv, func in fused.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or gv.name_hint.startswith("reshape"):
            continue
        parallel = "T.parallel" in scheduled[gv.name_hint].script()
        if _too_small_for_threads(func):
            small += 1
            assert not parallel, gv.name_hint
        elif gv.name_hint.startswith("fused_conv2d"):
            big += 1
            assert parallel, gv.name_hint
    assert small >= 2 and big >= (1 if thresholds else 0)


@pytest.mark.parametrize("channels, extent", [(112, 16), (1000, 8), (136, 8), (128, 64), (3, 64), (24, 8)])
def test_injective_kernels_vectorize_within_a_row(channels, extent):
    """MetaSchedule vectorizes 64 elements of the fused loops; where 64 does not divide the
    channels a vector wraps across rows (ShuffleNet's 56x56x112 bias+ReLU: 340 us instead
    of 19 us). Injective kernels get the largest power of two that divides them."""
    import tvm
    from pass_helpers import relax_main
    from tvm import relax

    from tvmdeploy.compiler.kernels.select import generic_vector_extent
    from tvmdeploy.compiler.presets import load_preset, resolve_preset
    from tvmdeploy.compiler.tuning.default_schedule import apply_default_schedules

    shape = (1, 64, 64, channels)  # big enough for the parallel schedule (> 512 KiB)
    bias = np.random.default_rng(0).standard_normal(channels).astype("float32")
    mod = relax.transform.LegalizeOps()(relax_main(lambda bb, x: relax.op.nn.relu(bb.emit(relax.op.add(x, relax.const(bias)))), shape))
    kernels = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert [generic_vector_extent(f) for f in kernels] == [extent] * len(kernels)
    _, target = resolve_preset(load_preset("host"))
    scheduled, _ = apply_default_schedules(mod, target)
    x = np.random.default_rng(1).standard_normal(shape).astype("float32")
    vm = relax.VirtualMachine(tvm.compile(scheduled, target=target), tvm.cpu())
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), np.maximum(x + bias, 0), rtol=1e-6)
    texts = [f.script() for f in scheduled.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    if extent != 64:
        assert all(f"T.vectorized(T.int64({extent}))" in t for t in texts)


def test_pooling_keeps_metaschedules_vector_extent():
    import tvm
    from pass_helpers import relax_main
    from tvm import relax

    from tvmdeploy.compiler.kernels.channel_reduce import has_reduction

    mod = relax.transform.LegalizeOps()(relax_main(lambda bb, x: relax.op.nn.max_pool2d(x, 3, 2, 1, layout="NHWC"), (1, 20, 20, 24)))
    (pool,) = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert has_reduction(pool)
