"""Failures ONNX's node tests found in tvmdeploy itself (not in TVM's importer), each on a
one-node model (tests/benchmarks/onnx_conformance.py runs the whole set as a report)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tvmdeploy import compile_model, load
from tvmdeploy.compiler.frontend import import_model
from tvmdeploy.errors import ModelImportError, summarize_exception


def _save(tmp_path, nodes, inputs, outputs, initializers=(), opset=17, name="m"):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializers))
    path = tmp_path / f"{name}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)
    return path


def test_fixed_zero_size_dimension_is_static_not_symbolic(tmp_path):
    path = _save(
        tmp_path,
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [0, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [0, 4])],
    )
    imported = import_model(path)  # was: "'x' has symbolic dimension(s) ?", and 0 refused
    assert imported.inputs[0].shape == (0, 4)


def test_empty_intermediate_tensor_compiles(tmp_path):
    """A slice past the end is empty; its kernel's loops have extent 0, which the default
    schedules' vectorization rejected at build time."""
    starts, ends, axes = (helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in (("s", 5), ("e", 9), ("a", 1)))
    path = _save(
        tmp_path,
        [
            helper.make_node("Slice", ["x", "s", "e", "a"], ["empty"]),
            helper.make_node("Concat", ["x", "empty"], ["y"], axis=1),
            helper.make_node("Relu", ["y"], ["z"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3])],
        initializers=[starts, ends, axes],
    )
    model = load(compile_model(path, "host", output_dir=tmp_path / "a").artifact_dir)
    x = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)
    np.testing.assert_array_equal(model(x)[0], np.maximum(x, 0))


def test_slice_with_starts_and_ends_as_inputs(tmp_path):
    """Output shape depends on input values: TVM's FoldConstant used to leave calls to a
    shape function it did not keep ("no definition of shape_func")."""
    vi = helper.make_tensor_value_info
    path = _save(
        tmp_path,
        [helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"])],
        [vi("x", TensorProto.FLOAT, [6, 5]), vi("starts", TensorProto.INT64, [2]),
         vi("ends", TensorProto.INT64, [2]), vi("axes", TensorProto.INT64, [2])],
        [vi("y", TensorProto.FLOAT, None)],
    )
    result = compile_model(path, "host", output_dir=tmp_path / "a")
    assert result.manifest.outputs[0].shape == (-1, -1)  # data-dependent
    model = load(result.artifact_dir)
    x = np.arange(30, dtype=np.float32).reshape(6, 5)
    got = model(x, np.array([1, 0], np.int64), np.array([4, 3], np.int64), np.array([0, 1], np.int64))[0]
    np.testing.assert_array_equal(got, x[1:4, 0:3])


def test_batchnorm_in_training_mode_is_refused(tmp_path):
    vi = helper.make_tensor_value_info
    params = [helper.make_tensor(n, TensorProto.FLOAT, [3], [1.0, 1.0, 1.0]) for n in ("scale", "bias", "mean", "var")]
    path = _save(
        tmp_path,
        [helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["y", "rm", "rv"],
                          name="bn_train", training_mode=1)],
        [vi("x", TensorProto.FLOAT, [2, 3, 4, 4])],
        [vi("y", TensorProto.FLOAT, [2, 3, 4, 4]), vi("rm", TensorProto.FLOAT, [3]), vi("rv", TensorProto.FLOAT, [3])],
        initializers=params,
    )
    with pytest.raises(ModelImportError, match=r"BatchNormalization node\(s\) 'bn_train' are in training mode"):
        import_model(path)


def test_exception_without_message_still_says_something():
    assert summarize_exception(RuntimeError("")) == "RuntimeError: (no message; rerun with --debug)"
    assert summarize_exception(RuntimeError("first\nlast\n\n")) == "RuntimeError: last"


def test_scalar_input_reaches_the_artifact_as_a_scalar(tmp_path):
    """The loader passed a 0-d input as shape (1,) (np.ascontiguousarray), which the VM refused."""
    vi = helper.make_tensor_value_info
    path = _save(
        tmp_path,
        [helper.make_node("Pow", ["x", "y"], ["z"])],
        [vi("x", TensorProto.FLOAT, [3]), vi("y", TensorProto.FLOAT, [])],
        [vi("z", TensorProto.FLOAT, [3])],
    )
    model = load(compile_model(path, "host", output_dir=tmp_path / "a").artifact_dir)
    got = model(np.array([1, 2, 3], np.float32), np.array(2, np.float32))[0]
    np.testing.assert_allclose(got, [1, 4, 9])


def test_if_is_not_reported_as_unsupported(tmp_path):
    """TVM's importer converts If itself (not through its converter map)."""
    vi = helper.make_tensor_value_info

    def branch(name, value):
        const = helper.make_node("Constant", [], [f"{name}_out"], value=helper.make_tensor("v", TensorProto.FLOAT, [2], value))
        return helper.make_graph([const], name, [], [vi(f"{name}_out", TensorProto.FLOAT, [2])])

    path = _save(
        tmp_path,
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", [1, 2]), else_branch=branch("else", [3, 4]))],
        [vi("cond", TensorProto.BOOL, [])],
        [vi("y", TensorProto.FLOAT, [2])],
    )
    imported = import_model(path)
    assert [s.name for s in imported.inputs] == ["cond"]


def test_sub_byte_input_is_a_clear_error(tmp_path):
    """int4 tensors crashed in TVM's runtime when fed ("TensorCopyFromBytes: size mismatch")."""
    vi = helper.make_tensor_value_info
    path = _save(
        tmp_path,
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
        [vi("x", TensorProto.INT4, [4])],
        [vi("y", TensorProto.FLOAT, [4])],
        opset=21,
    )
    with pytest.raises(ModelImportError, match=r"input 'x' has element type int4, which the loader cannot pass"):
        import_model(path)
