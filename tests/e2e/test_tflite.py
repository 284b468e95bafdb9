"""TFLite models (a Keras CNN converted by the TFLite converter, float and full-integer
int8; tests/fixtures/make_tflite_models.py) against the LiteRT interpreter.

Float: within 1e-4. int8: within one quantization step of the output for >= 99 % of
the outputs, computed on the packed int8 kernels (not as float), in NHWC as TFLite
stores it, with no transposes of activations.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tvm
from conftest import MODELS
from tvm import relax

pytest.importorskip("tflite")
litert = pytest.importorskip("ai_edge_litert.interpreter")

from tvmdeploy import compile_model, load  # noqa: E402
from tvmdeploy.cli.main import main  # noqa: E402
from tvmdeploy.compiler.analysis.channels import bindings_of  # noqa: E402
from tvmdeploy.compiler.frontend import import_model  # noqa: E402
from tvmdeploy.compiler.optimize import optimize_graph  # noqa: E402

FLOAT = MODELS / "keras_cnn_float.tflite"
INT8 = MODELS / "keras_cnn_int8.tflite"


def litert_run(path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    interpreter = litert.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    results = []
    for x in inputs:
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        results.append(interpreter.get_tensor(out["index"]).copy())
    return results


def samples(path, n: int, seed: int = 0) -> list[np.ndarray]:
    """Images in [-1, 1] (the representative data's range), quantized like the model's input."""
    interpreter = litert.Interpreter(model_path=str(path))
    detail = interpreter.get_input_details()[0]
    rng = np.random.default_rng(seed)
    images = [rng.uniform(-1, 1, detail["shape"]).astype(np.float32) for _ in range(n)]
    if detail["dtype"] == np.int8:
        scale, zero = detail["quantization"]
        return [np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8) for x in images]
    return images


def activation_transposes(mod) -> list[str]:
    """permute_dims of anything but a constant (a weight transpose folds at compile time)."""
    found = []
    for b in bindings_of(mod["main"]):
        v = b.value
        if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op) and v.op.name == "relax.permute_dims":
            if not isinstance(v.args[0], relax.Constant):
                found.append(str(b.var.name_hint))
    return found


@pytest.fixture(scope="module")
def float_artifact(tmp_path_factory):
    """The float model compiled once through the CLI: (folder, the compile summary)."""
    import contextlib
    import io

    folder = tmp_path_factory.mktemp("tflite") / "f"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["compile", str(FLOAT), "-o", str(folder)])
    assert code == 0
    return folder, out.getvalue()


@pytest.fixture(scope="module")
def int8_result(tmp_path_factory):
    return compile_model(INT8, "host", output_dir=tmp_path_factory.mktemp("tflite") / "q")


def test_float_model_matches_litert(float_artifact, capsys):
    folder, out = float_artifact
    assert "import:  TFLite (tflite " in out and "by tvm.relax.frontend.tflite.from_tflite" in out
    model = load(folder)
    assert model.inputs[0].shape == (1, 16, 16, 3)  # NHWC, as TFLite has it
    xs = samples(FLOAT, 8)
    for got, ref in zip((model(x)[0] for x in xs), litert_run(FLOAT, xs)):
        assert got.shape == ref.shape and got.dtype == ref.dtype
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["extra"]["import"]["format"] == "tflite"
    assert "FoldBatchnormToConv2D" in manifest["passes"] or "FoldConvChannelAffine" in manifest["passes"]

    code = main(["inspect", str(folder)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "import:  TFLite" in out and "tflite-nhwc-kept" in out

    # bench's default peer is ONNX Runtime on the source model, which cannot read a .tflite
    code = main(["bench", str(folder), "--repeat", "1", "--warmup", "0"])
    _, err = capsys.readouterr()
    assert code == 1 and len(err.strip().splitlines()) == 1 and "which is not ONNX" in err, err


@pytest.mark.parametrize("path", [FLOAT, INT8], ids=["float", "int8"])
def test_nhwc_reaches_the_kernels_without_activation_transposes(path):
    imported = import_model(path)
    mod, _ = optimize_graph(imported.mod)
    assert activation_transposes(mod) == []
    convs = [b.value for b in bindings_of(mod["main"])
             if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op) and b.value.op.name == "relax.nn.conv2d"]
    assert convs and all(c.attrs.data_layout == "NHWC" and c.attrs.kernel_layout == "OHWI" for c in convs)


def test_int8_model_runs_on_packed_int8_kernels_within_one_step_of_litert(int8_result):
    result = int8_result
    report = result.manifest.extra["quantization"]
    assert report["scheme"] == "qdq-int8"
    assert "tflite-int8-as-qdq" in result.manifest.extra["import"]["rewrites"]
    # The three 16/32-channel convolutions have int8 kernels in the instruction's layout
    # (the depthwise conv and the 10-way dense are not packable: they stay int8 / float).
    assert report["kernels"]["packed"] and report["kernels"]["packed_layers"] == ["conv2d_0", "conv2d_1", "conv2d_2"]
    assert "matmul_0" in report["layers"]
    model = load(result.artifact_dir)
    assert model.inputs[0].dtype == "int8" and model.outputs[0].dtype == "int8"
    xs = samples(INT8, 48, seed=1)
    ours = np.stack([model(x)[0] for x in xs]).astype(np.int32)
    theirs = np.stack(litert_run(INT8, xs)).astype(np.int32)
    steps = np.abs(ours - theirs)
    assert np.mean(steps <= 1) >= 0.99, np.bincount(steps.ravel())
    assert steps.max() <= 2


def test_int8_model_agrees_with_the_float_model(float_artifact, int8_result):
    """The int8 artifact computes the Keras model (not garbage that LiteRT happens to share):
    its dequantized logits track the float model's."""
    f = load(float_artifact[0])
    q = load(int8_result.artifact_dir)
    interpreter = litert.Interpreter(model_path=str(INT8))
    (s_in, z_in), (s_out, z_out) = (interpreter.get_input_details()[0]["quantization"],
                                    interpreter.get_output_details()[0]["quantization"])
    rng = np.random.default_rng(3)
    ref, got = [], []
    for _ in range(16):
        x = rng.uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)
        ref.append(f(x)[0])
        xq = np.clip(np.round(x / s_in) + z_in, -128, 127).astype(np.int8)
        got.append((q(xq)[0].astype(np.float32) - z_out) * s_out)
    ref, got = np.concatenate(ref), np.concatenate(got)
    sqnr = 10 * np.log10(np.sum(ref**2) / np.sum((ref - got) ** 2))
    assert sqnr > 20, sqnr
