"""The untuned default for matmul-like kernels: MetaSchedule's design space replayed with
analytic tile sizes from the target preset's vector width and register count. Numbers
against numpy (odd sizes, batches, batched matmul), builds for every CPU preset."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tvmdeploy import compile_model
from tvmdeploy.compiler.tuning.analytic import matmul_like, tile_sizes, vector_shape
from tvmdeploy.runtime import load


def test_vector_shape_comes_from_the_target_features():
    assert vector_shape({"avx512f", "avx2", "fma"}) == (16, 32)
    assert vector_shape({"avx2", "fma"}) == (8, 16)
    assert vector_shape({"neon"}, "aarch64-linux-gnu") == (4, 32)
    assert vector_shape(set(), "aarch64-linux-gnu") == (4, 32)
    assert vector_shape({"sse2"}) == (4, 16)


def test_tile_sizes():
    # BERT FFN: [1, 128, 768] x [768, 3072] on AVX-512.
    sizes = tile_sizes([1, 128, 3072, 768], [4, 4, 4, 2], lanes=16, registers=32)
    assert sizes[0] == [1, 1, 1, 1]
    assert sizes[2][3] == 32  # two vectors of output columns
    assert sizes[1][3] == 8  # rows x vectors = 16 accumulators = half the registers
    assert sizes[3] == [12, 64]
    # Every tiling multiplies back to the extent, whatever the sizes (odd, prime, 1).
    for extents, lanes, regs in [([3, 5, 19, 37], 8, 16), ([2, 4, 7, 9, 16], 4, 32), ([1, 1, 10, 64], 16, 32)]:
        tiles = [4] * (len(extents) - 1) + [2]
        for e, t in zip(extents, tile_sizes(extents, tiles, lanes, regs)):
            assert int(np.prod(t)) == e and len(t) in (2, 4)
    assert matmul_like([4, 4, 2]) and not matmul_like([4, 4, 4, 4, 2, 2, 2])


def _matmul_model(path):
    """y = relu(x @ W + b) with odd sizes and a batch of 3; z = a @ b batched (2 x 4 heads)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((37, 19)).astype(np.float32)
    b = rng.standard_normal(19).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["xwb"]),
        helper.make_node("Relu", ["xwb"], ["y"]),
        helper.make_node("MatMul", ["qa", "qb"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes, "matmuls",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5, 37]),
         helper.make_tensor_value_info("qa", TensorProto.FLOAT, [2, 4, 7, 16]),
         helper.make_tensor_value_info("qb", TensorProto.FLOAT, [2, 4, 16, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5, 19]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 4, 7, 9])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return w, b


def test_analytic_matmul_schedules_match_numpy(tmp_path):
    import tvm

    from tvmdeploy.compiler.frontend import import_model
    from tvmdeploy.compiler.lowering import lower_for_tuning
    from tvmdeploy.compiler.optimize import optimize_graph
    from tvmdeploy.compiler.presets import load_preset, resolve_preset
    from tvmdeploy.compiler.tuning import default_schedule

    path = tmp_path / "matmuls.onnx"
    w, b = _matmul_model(path)
    # The matmul kernels take the analytic tiles (not the random sample).
    _, target = resolve_preset(load_preset("host"))
    fused = lower_for_tuning(optimize_graph(import_model(path).mod)[0])
    matmuls = [(gv, f) for gv, f in fused.functions.items() if isinstance(f, tvm.tirx.PrimFunc) and "matmul" in gv.name_hint]
    assert len(matmuls) == 2
    for gv, func in matmuls:
        analytic = default_schedule._first_design_space_sample(func, target, 2, 1)
        random = default_schedule._design_space_sample(func, target, 2, 1, "post-order-apply")
        assert analytic.mod.script() != random.mod.script(), gv.name_hint

    result = compile_model(path, "host", output_dir=tmp_path / "a", cache_dir=tmp_path / "c")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5, 37)).astype(np.float32)
    qa = rng.standard_normal((2, 4, 7, 16)).astype(np.float32)
    qb = rng.standard_normal((2, 4, 16, 9)).astype(np.float32)
    y, z = load(result.artifact_dir)(x, qa, qb)
    np.testing.assert_allclose(y, np.maximum(x @ w + b, 0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(z, qa @ qb, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("preset", ["x86_64", "x86_64-avx2", "x86_64-avx512", "aarch64-cortex-a72"])
def test_default_schedules_build_for_every_cpu_preset(preset, tmp_path):
    from tvmdeploy.compiler.presets import load_preset

    facts = load_preset(preset).build
    if facts.cross_compiler and shutil.which(facts.cross_compiler) is None:
        pytest.skip(f"{facts.cross_compiler} not installed")
    path = tmp_path / "matmuls.onnx"
    _matmul_model(path)
    result = compile_model(path, preset, output_dir=tmp_path / preset, cache_dir=tmp_path / "c")
    assert result.manifest.extra["tuning"]["kernels_default_schedule"] >= 2
    assert (result.artifact_dir / result.manifest.library).stat().st_size > 0
