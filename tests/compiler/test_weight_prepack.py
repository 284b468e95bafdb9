"""Weight prepacking through TVM's own mechanism: kernels' weight buffers are marked
layout-free when lowering, schedules may repack them (MetaSchedule's RewriteLayout), and
the repacking is folded at compile time. Records tuned before this changed the kernels
(cache layout version 1) are never applied."""

from __future__ import annotations

import numpy as np
from conftest import MODELS, ort_run

from tvmdeploy import compile_model
from tvmdeploy.runtime import load

CONV = MODELS / "conv_bn_relu.onnx"


def _lowered(model=CONV, lift=False):
    from tvmdeploy.compiler.frontend import import_model
    from tvmdeploy.compiler.lowering import lower_for_tuning
    from tvmdeploy.compiler.optimize import optimize_graph
    from tvmdeploy.compiler.presets import load_preset, resolve_preset

    _, target = resolve_preset(load_preset("host"))
    mod, _ = optimize_graph(import_model(model).mod)
    if lift:
        from tvmdeploy.compiler.pruning.lift import lift_weights

        mod, _ = lift_weights(mod)
    return lower_for_tuning(mod), target


def _kernels(mod):
    import tvm

    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def test_weights_are_layout_free_only_when_constant():
    fused, _ = _lowered()
    marks = {name: [int(i) for i in f.attrs["layout_free_buffers"]] for name, f in _kernels(fused).items()}
    assert all(marks[n] == [1, 2] for n in marks if n.startswith(("fused_conv2d", "fused_matmul"))), marks
    # Weights lifted to parameters of main (kept beside the library) are not repacked:
    # that would run a repacking kernel on every call.
    lifted, _ = _lowered(lift=True)
    assert all(not list(f.attrs["layout_free_buffers"]) for f in _kernels(lifted).values())


def test_default_schedules_repack_weights_at_compile_time():
    from tvmdeploy.compiler.lowering import fold_weight_layouts
    from tvmdeploy.compiler.reports import PassLog
    from tvmdeploy.compiler.tuning.default_schedule import apply_default_schedules

    fused, target = _lowered()
    scheduled, _ = apply_default_schedules(fused, target)
    assert any("layout_rewrite_preproc" in f.script() for f in _kernels(scheduled).values())
    ran = PassLog()
    folded = fold_weight_layouts(scheduled, target, ran)
    assert list(ran) == ["SplitLayoutRewritePreproc", "FoldConstant", "RemoveUncalledKernels"]
    kernels = _kernels(folded)
    # No repacking left in any kernel, and no repacking kernel left to call.
    assert not any("layout_rewrite_preproc" in f.script() for f in kernels.values())
    assert any(name.endswith("_prepacked") for name in kernels)
    assert "layout_rewrite" not in folded["main"].script()


def _batched_weight_model(path):
    """x [2, 5, 24] @ W [2, 24, 32] + b: a constant weight per batch, which no packed
    kernel takes (convolutions and 2-D weights have their own), so RewriteLayout packs it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("w", (2, 24, 32)), ("b", (32,)))]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])], "batched",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 24])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 32])], weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_prepacked_artifact_matches_onnxruntime_and_lists_the_passes(tmp_path):
    model = _batched_weight_model(tmp_path / "batched.onnx")
    result = compile_model(model, "host", output_dir=tmp_path / "a", cache_dir=tmp_path / "c")
    passes = result.manifest.passes
    assert "AttachAttrLayoutFreeBuffers" in passes
    assert passes.index("SplitLayoutRewritePreproc") > passes.index("DefaultCPUSchedules")
    x = np.random.default_rng(7).standard_normal((2, 5, 24)).astype(np.float32)
    np.testing.assert_allclose(load(result.artifact_dir)(x)[0], ort_run(model, {"x": x})[0], rtol=1e-4, atol=1e-4)


MASKED_ATTENTION = MODELS / "masked_attention.onnx"  # tests/fixtures/make_masked_attention.py


def test_a_gather_by_constant_indices_is_not_repacked():
    """GatherND by constant [batch, position] pairs (torch's dynamo exporter, GPT-2's and
    Llama's padding masks): RewriteLayout repacked the pairs so that every batch read
    batch 1's mask; such kernels keep their constants as they are."""
    fused, _ = _lowered(MASKED_ATTENTION)
    gathers = {n: f for n, f in _kernels(fused).items() if "gather_nd" in n}
    assert gathers and all(not list(f.attrs["layout_free_buffers"]) for f in gathers.values())


def test_padding_masks_of_a_dynamo_export_match_onnxruntime(tmp_path):
    result = compile_model(MASKED_ATTENTION, "host", output_dir=tmp_path / "a", cache_dir=tmp_path / "c")
    model = load(result.artifact_dir)
    ids = np.random.default_rng(0).integers(0, 50, (2, 16)).astype(np.int64)
    right, left, ones = (np.ones((2, 16), np.int64) for _ in range(3))
    right[1, 11:] = 0
    left[0, :5] = 0
    for mask in (right, left, ones):
        feeds = {"input_ids": ids, "attention_mask": mask}
        np.testing.assert_allclose(model(ids, mask)[0], ort_run(MASKED_ATTENTION, feeds)[0], rtol=1e-4, atol=1e-5)


def _write_record(cache, func, target):
    """A record for `func` (its first design-space sample) in `cache`, as tuning would."""
    import tvm

    from tvmdeploy.compiler._tvm import ms
    from tvmdeploy.compiler.tuning.database import load_database

    mod = tvm.ir.IRModule({"main": func.with_attr("global_symbol", "main")})
    context = ms.TuneContext(mod=mod, target=target, space_generator="post-order-apply", num_threads=1, rand_state=1)
    trace = context.generate_design_space()[0].trace
    database = load_database(cache.folder)
    workload = database.commit_workload(mod)
    database.commit_tuning_record(
        ms.database.TuningRecord(trace, workload, [1e-4], target, ms.arg_info.ArgInfo.from_prim_func(func))
    )


def test_records_from_before_the_layout_version_bump_are_not_applied(tmp_path, monkeypatch):
    from tvmdeploy.compiler import _tvm
    from tvmdeploy.compiler.pipeline import schedule_kernels
    from tvmdeploy.compiler.presets import load_preset
    from tvmdeploy.compiler.tuning import cache as cache_module

    fused, target = _lowered(MODELS / "mlp.onnx")
    name, func = next((n, f) for n, f in _kernels(fused).items() if n.startswith("fused_matmul"))
    target_dict = _tvm.target_to_dict(target)
    preset = load_preset("host")

    # A record written by a tvmdeploy whose cache layout version was 1 ...
    monkeypatch.setattr(cache_module, "CACHE_LAYOUT_VERSION", 1)
    old = cache_module.TargetCache.open(target_dict, _tvm.TVM_VERSION, tmp_path)
    _write_record(old, func, target)
    assert "/v1/" in str(old.folder)
    monkeypatch.undo()
    # ... is not applied now; the same record under today's version is.
    current = cache_module.TargetCache.open(target_dict, _tvm.TVM_VERSION, tmp_path)
    assert current.folder != old.folder
    _, report = schedule_kernels(fused, target, preset, current)
    assert report.kernels_from_cache == 0
    _write_record(current, func, target)
    _, report = schedule_kernels(fused, target, preset, current)
    assert report.kernels_from_cache == 1, name
