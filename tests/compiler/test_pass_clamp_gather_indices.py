"""ClampGatherIndices and the inputs that index a table: Before/Expected, what the pass
leaves alone, the value ranges the manifest records, and end to end on torch exports of an
embedding model against ONNX Runtime and torch, where out-of-range ids are refused in one
line (they read outside the table before: garbage at id 100, a segfault at 1e8)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from pass_helpers import relax_main, verify_pass
from tvm import relax

from tvmdeploy import compile_model, load
from tvmdeploy.compiler.analysis.gather_indices import index_ranges
from tvmdeploy.compiler.passes.clamp_gather_indices import ClampGatherIndices
from tvmdeploy.errors import InputMismatchError

TABLE = relax.const(np.arange(40, dtype="float32").reshape(10, 4))


def _ids_module(body, shape=(2, 3), dtype="int64"):
    return relax_main(body, shape, dtype)


def test_a_gather_by_runtime_indices_is_clamped():
    before = _ids_module(lambda bb, ids: relax.op.take(TABLE, ids, axis=0))
    expected = _ids_module(lambda bb, ids: relax.op.take(TABLE, ids, axis=0, mode="clip"))
    verify_pass(ClampGatherIndices(), before, expected)


@pytest.mark.parametrize("case", ["constant-indices", "wrap-mode"])
def test_gathers_that_cannot_read_outside_are_left_alone(case):
    def body(bb, ids):
        if case == "constant-indices":
            return relax.op.take(TABLE, relax.const(np.array([1, 9], "int64")), axis=0)
        return relax.op.take(TABLE, ids, axis=0, mode="wrap")

    mod = _ids_module(body)
    verify_pass(ClampGatherIndices(), mod, mod)


def test_gather_elements_indices_wrap_negatives_then_clamp():
    before = _ids_module(lambda bb, ids: relax.op.gather_elements(TABLE, ids, axis=1), shape=(10, 4))

    def expected(bb, ids):
        n, zero, one = (relax.const(np.array(v, "int64"), "int64") for v in (4, 0, 1))
        wrapped = relax.op.where(relax.op.less(ids, zero), relax.op.add(ids, n), ids)
        inside = relax.op.minimum(relax.op.maximum(wrapped, zero), relax.op.subtract(n, one))
        return relax.op.gather_elements(TABLE, inside, axis=1)

    verify_pass(ClampGatherIndices(), before, relax.transform.Normalize()(_ids_module(expected, shape=(10, 4))))


# op: (index shape, output shape, attributes, update shape of a scatter, in-range indices)
ONNX_INDEXED_OPS = {
    "GatherElements": ([4, 5], [4, 5], {"axis": 0}, None, lambda rng: rng.integers(-4, 4, (4, 5))),
    "GatherND": ([3, 2], [3], {}, None, lambda rng: np.array([[0, 1], [2, -1], [-4, 3]])),
    "ScatterElements": ([2, 5], [4, 5], {"axis": 0}, [2, 5], lambda rng: np.array([[0, 1, 2, 3, 0], [3, 2, 1, 0, -1]])),
    "ScatterND": ([3, 2], [4, 5], {}, [3], lambda rng: np.array([[0, 1], [2, -1], [-4, 3]])),
}


def _onnx_graph(op):
    from onnx import TensorProto, helper, numpy_helper

    index_shape, out_shape, attrs, update_shape, _ = ONNX_INDEXED_OPS[op]
    constants = [numpy_helper.from_array(np.arange(20, dtype=np.float32).reshape(4, 5), "data")]
    if update_shape:
        constants.append(numpy_helper.from_array(-np.ones(update_shape, np.float32), "updates"))
    graph = helper.make_graph(
        [helper.make_node(op, ["data", "idx", *(["updates"] if update_shape else [])], ["y"], **attrs)], "g",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, index_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], constants,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("op", list(ONNX_INDEXED_OPS))
def test_onnx_gathers_and_scatters_by_input_indices_match_onnxruntime_and_stay_inside(op, tmp_path):
    """The gathers segfaulted on an index of 1e8 (the scatters wrote outside); in range
    (negatives too) they match ONNX Runtime."""
    import onnx
    import tvm

    from tvmdeploy.compiler.frontend import import_model
    from tvmdeploy.compiler.optimize import optimize_graph
    from tvmdeploy.compiler.presets import load_preset, resolve_preset

    path = tmp_path / f"{op}.onnx"
    onnx.save(_onnx_graph(op), str(path))
    idx = ONNX_INDEXED_OPS[op][4](np.random.default_rng(0))
    want = ort.InferenceSession(str(path)).run(None, {"idx": idx})[0]
    loaded = load(compile_model(path, "host", output_dir=tmp_path / "art").artifact_dir)
    np.testing.assert_array_equal(loaded(idx)[0], want)
    # The library alone (no loader check): far indices reach only the first or last element.
    _, target = resolve_preset(load_preset("host"))
    vm = relax.VirtualMachine(tvm.compile(optimize_graph(import_model(path).mod)[0], target=target), tvm.cpu())
    for far in (10**8, -(10**8)):
        out = vm["main"](tvm.runtime.tensor(np.full(idx.shape, far, np.int64))).numpy()
        assert np.isin(out, np.arange(-1, 20)).all()


def _onnx_wrapped_take(bb, ids):
    """What TVM's ONNX importer emits for Gather: negative indices wrapped, then take."""
    negative = bb.emit(relax.op.less(ids, relax.const(0, "int64")))
    shifted = bb.emit(relax.op.add(ids, relax.const(10, "int64")))
    return relax.op.take(TABLE, bb.emit(relax.op.where(negative, shifted, ids)), axis=0)


@pytest.mark.parametrize(
    "body, want",
    [
        (lambda bb, ids: relax.op.take(TABLE, ids, axis=0), {0: (0, 10)}),
        (_onnx_wrapped_take, {0: (-10, 10)}),
        (lambda bb, ids: relax.op.take(TABLE, bb.emit(relax.op.astype(ids, "int32")), axis=0), {0: (0, 10)}),
        (lambda bb, ids: relax.op.take(TABLE, bb.emit(relax.op.reshape(ids, (6,))), axis=1), {0: (0, 4)}),
        (lambda bb, ids: relax.op.take(TABLE, bb.emit(relax.op.multiply(ids, ids)), axis=0), {}),
        (lambda bb, ids: relax.op.gather_elements(TABLE, bb.emit(relax.op.reshape(ids, (2, 3))), axis=1), {0: (-4, 4)}),
    ],
    ids=["direct", "onnx-negative-wrap", "cast", "reshape-axis1", "computed-indices", "gather-elements"],
)
def test_index_ranges_follow_the_input_to_its_table(body, want):
    assert index_ranges(_ids_module(body)["main"]) == want


class Embedder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.words, self.types = torch.nn.Embedding(100, 16), torch.nn.Embedding(2, 16)
        self.proj = torch.nn.Linear(16, 4)

    def forward(self, ids, types):
        return self.proj(self.words(ids) + self.types(types)).sum(1)


@pytest.fixture(scope="module")
def embedder_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("embedder") / "embedder.onnx"
    example = (torch.randint(0, 100, (2, 8)), torch.zeros(2, 8, dtype=torch.int64))
    torch.onnx.export(Embedder().eval(), example, str(path), input_names=["ids", "types"], dynamo=False, opset_version=17)
    return path


def test_onnx_export_matches_onnxruntime_and_refuses_ids_outside_the_table(embedder_onnx, tmp_path):
    model = load(compile_model(embedder_onnx, "host", output_dir=tmp_path / "art").artifact_dir)
    assert [s.index_range for s in model.inputs] == [(-100, 100), (-2, 2)]
    rng = np.random.default_rng(0)
    ids, types = rng.integers(-100, 100, (2, 8)), rng.integers(-2, 2, (2, 8))
    want = ort.InferenceSession(str(embedder_onnx)).run(None, {"ids": ids, "types": types})[0]
    np.testing.assert_allclose(model(ids, types)[0], want, rtol=1e-5, atol=1e-5)
    for bad in (100, 10**8, -101):
        with pytest.raises(InputMismatchError, match=rf"input 'ids' holds {bad} at \[0, 3\], outside -100\.\.99"):
            ids_bad = ids.copy()
            ids_bad[0, 3] = bad
            model(ids_bad, types)
    random_ids, random_types = model.random_inputs()
    assert random_types.min() >= 0 and random_types.max() < 2  # --random-inputs stays in the 2-row table
    model(random_ids, random_types)


def test_clamped_gather_never_reads_outside_the_table(embedder_onnx, tmp_path):
    """The library itself, without the loader's check: an id of 1e8 reads the last row."""
    import tvm

    from tvmdeploy.compiler.frontend import import_model
    from tvmdeploy.compiler.optimize import optimize_graph
    from tvmdeploy.compiler.presets import load_preset, resolve_preset

    mod, report = optimize_graph(import_model(embedder_onnx).mod)
    assert "ClampGatherIndices" in report.passes
    _, target = resolve_preset(load_preset("host"))
    vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    types = np.zeros((2, 8), np.int64)
    far = vm["main"](tvm.runtime.tensor(np.full((2, 8), 10**8, np.int64)), tvm.runtime.tensor(types)).numpy()
    last = vm["main"](tvm.runtime.tensor(np.full((2, 8), 99, np.int64)), tvm.runtime.tensor(types)).numpy()
    np.testing.assert_array_equal(far, last)


def test_torch_program_records_nonnegative_ranges_and_matches_torch(tmp_path):
    module = Embedder().eval()
    example = (torch.randint(0, 100, (1, 6)), torch.zeros(1, 6, dtype=torch.int64))
    model = load(compile_model(module, "host", output_dir=tmp_path / "art", example_inputs=example).artifact_dir)
    assert [s.index_range for s in model.inputs] == [(0, 100), (0, 2)]
    ids, types = np.array([[0, 5, 50, 99, 1, 2]]), np.array([[0, 1, 1, 0, 0, 1]])
    want = module(torch.tensor(ids), torch.tensor(types)).detach().numpy()
    np.testing.assert_allclose(model(ids, types)[0], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(InputMismatchError, match=r"input 'types' holds 2 at \[0, 0\], outside 0\.\.1"):
        model(ids, np.full((1, 6), 2))
