"""Compiled artifacts against ONNX Runtime, on real architectures and real exports.

Tolerance: rtol 1e-3 and atol 1e-4 scaled by the output's magnitude (max(1, max|ref|)):
random-weight networks produce logits in the hundreds, where fp32 reassociation alone
moves the last digits.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import LIGHT, MODELS, ort_run, random_inputs, randomized_light_model

from tvmdeploy import compile_model
from tvmdeploy.runtime import load


def assert_matches(outputs, references):
    assert len(outputs) == len(references)
    for out, ref in zip(outputs, references):
        assert out.shape == ref.shape and out.dtype == ref.dtype
        atol = 1e-4 * max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(out, ref, rtol=1e-3, atol=atol)


def compile_and_compare(model_path, out_dir, input_shapes=None, feeds=None):
    result = compile_model(model_path, "host", output_dir=out_dir, input_shapes=input_shapes)
    model = load(result.artifact_dir)
    feeds = feeds or dict(zip((s.name for s in model.inputs), model.random_inputs()))
    assert_matches(model(**feeds), ort_run(model_path, feeds))
    return result


@pytest.mark.parametrize("name", ["mlp", "mlp_opset11", "conv_bn_relu", "transformer_block"])
def test_torch_exports_match_onnxruntime(name, tmp_path):
    result = compile_and_compare(MODELS / f"{name}.onnx", tmp_path / name)
    # The manifest lists what each stage reported running, in pipeline order (that the
    # BatchNorm arithmetic is gone is checked in tests/compiler/test_pass_fold_conv_affine.py).
    reports = result.reports
    assert result.manifest.passes == reports.imported.passes + reports.graph.passes + reports.lowering.passes + reports.schedule.passes + reports.build.passes
    assert reports.build.passes == ["RegisterTilesOnStack"]
    assert 0 < reports.schedule.kernels_default <= reports.lowering.kernels  # an empty cache: defaults only


def test_dynamic_export_with_shape_override(tmp_path):
    """A torch export with symbolic batch/seq dims and Shape->Concat->Reshape subgraphs."""
    path = MODELS / "transformer_block_dynamic.onnx"
    feeds = {"tokens": np.random.default_rng(1).standard_normal((2, 24, 64)).astype(np.float32)}
    result = compile_and_compare(path, tmp_path / "dyn", input_shapes={"tokens": (2, 24, 64)}, feeds=feeds)
    assert result.manifest.inputs[0].shape == (2, 24, 64)
    assert result.manifest.outputs[0].shape == (2, 24, 64)


def test_digits_cnn_keeps_its_accuracy(digits_artifact, digits, digits_model):
    images, labels = digits
    model = load(digits_artifact)
    logits = np.concatenate([model(images[i : i + 1])[0] for i in range(len(labels))])
    reference = np.concatenate([ort_run(digits_model, {"image": images[i : i + 1]})[0] for i in range(len(labels))])
    assert_matches([logits], [reference])
    accuracy = float(np.mean(logits.argmax(1) == labels))
    assert accuracy >= 0.98, accuracy  # the trained model scores 99.4% in PyTorch and ONNX Runtime


@pytest.mark.parametrize(
    "name",
    [
        "squeezenet",
        "shufflenet",
        "inception_v1",
        pytest.param("resnet50", marks=pytest.mark.slow),
    ],
)
def test_light_architectures_with_random_weights(name, tmp_path):
    path = randomized_light_model(name, tmp_path)
    compile_and_compare(path, tmp_path / "artifact", feeds=random_inputs(path))


@pytest.mark.slow
def test_light_resnet50_as_shipped_matches_reference_output(tmp_path):
    """The unmodified model file against the reference output the onnx package ships."""
    from onnx import TensorProto, numpy_helper

    result = compile_model(LIGHT / "light_resnet50.onnx", "host", output_dir=tmp_path / "r50")
    model = load(result.artifact_dir)
    expected = TensorProto()
    expected.ParseFromString((LIGHT / "light_resnet50_output_0.pb").read_bytes())
    feeds = random_inputs(LIGHT / "light_resnet50.onnx")
    (out,) = model(**feeds)
    np.testing.assert_allclose(out, numpy_helper.to_array(expected), rtol=1e-3, atol=1e-4)
    assert_matches([out], ort_run(LIGHT / "light_resnet50.onnx", feeds))


def test_multi_input_sum_imports_as_adds(tmp_path):
    """ONNX Sum (3 inputs, broadcasting) becomes a chain of Adds before import."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Sum", ["a", "b", "c"], ["y"], name="join")],
        "sum3",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 4, 3, 3]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4, 1, 3]),
         helper.make_tensor_value_info("c", TensorProto.FLOAT, [4, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3, 3])],
    )
    path = tmp_path / "sum3.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    result = compile_model(path, "host", output_dir=tmp_path / "a")
    assert "onnx-sum-to-adds" in result.manifest.passes
    compile_and_compare(path, tmp_path / "b", feeds=random_inputs(path))
