"""Bad model files and shapes get one clear message naming the file, input or node."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import MODELS
from onnx import TensorProto, helper

from tvmdeploy import compile_model
from tvmdeploy.errors import ModelImportError
from tvmdeploy.compiler.frontend import import_model


def test_missing_file(tmp_path):
    with pytest.raises(ModelImportError, match=r"nope.onnx: no such file"):
        import_model(tmp_path / "nope.onnx")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelImportError, match=r"empty.onnx: the file is empty"):
        import_model(path)


@pytest.mark.parametrize("content", [b"this is not a model\n", bytes(range(256)) * 8, b"\x08\x07"])
def test_not_onnx(tmp_path, content):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelImportError, match=r"model.onnx: not an ONNX model"):
        import_model(path)


def test_unsupported_operators_are_all_reported_before_conversion(tmp_path):
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu0"),
        helper.make_node("Celu", ["a"], ["b"], name="celu_1"),
        helper.make_node("Relu", ["b"], ["c"], name="relu1"),
        helper.make_node("FancyNorm", ["c"], ["y"], name="fancy_2", domain="com.example"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    path = tmp_path / "custom_ops.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelImportError) as info:
        import_model(path)
    message = str(info.value)
    assert "custom_ops.onnx: 2 node(s) use operators" in message
    assert "Celu (node 'celu_1')" in message
    assert "FancyNorm (node 'fancy_2', domain com.example)" in message


def test_symbolic_dimension_without_override_names_the_input():
    with pytest.raises(ModelImportError) as info:
        import_model(MODELS / "transformer_block_dynamic.onnx")
    message = str(info.value)
    assert "'tokens' has symbolic dimension(s) batch, seq" in message
    assert "--input-shape tokens=1,1,64" in message


def test_override_for_unknown_input_lists_the_inputs():
    with pytest.raises(ModelImportError, match=r"'token', which is not an input of the model \(inputs: tokens\)"):
        import_model(MODELS / "transformer_block_dynamic.onnx", input_shapes={"token": (1, 8, 64)})


def test_override_contradicting_a_fixed_dimension():
    with pytest.raises(ModelImportError, match=r"contradicts the model's fixed shape \[batch, seq, 64\]"):
        import_model(MODELS / "transformer_block_dynamic.onnx", input_shapes={"tokens": (1, 8, 32)})


def test_override_with_wrong_rank():
    with pytest.raises(ModelImportError, match=r"has 2 dimensions, the model declares 3"):
        import_model(MODELS / "transformer_block_dynamic.onnx", input_shapes={"tokens": (8, 64)})


def test_torch_constants_are_normalized_for_tvm():
    """torch 2.x writes Constant(value_ints), which TVM's importer cannot read alone."""
    raw = onnx.load(MODELS / "conv_bn_relu.onnx")
    assert any(a.name == "value_ints" for n in raw.graph.node if n.op_type == "Constant" for a in n.attribute)
    imported = import_model(MODELS / "conv_bn_relu.onnx")
    assert "onnx-normalize-constants" in imported.import_passes


def test_failed_compile_leaves_no_artifact(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"garbage")
    out = tmp_path / "out"
    with pytest.raises(ModelImportError):
        compile_model(path, "host", output_dir=out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [path]


def test_shape_subgraph_export_is_folded():
    imported = import_model(MODELS / "transformer_block_dynamic.onnx", input_shapes={"tokens": (1, 16, 64)})
    assert "onnxruntime-basic-fold" in imported.import_passes
    assert [s.shape for s in imported.outputs] == [(1, 16, 64)]
    assert np.dtype(imported.inputs[0].dtype) == np.float32
