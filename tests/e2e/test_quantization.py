"""int8 quantization: Before/Expected per pass; artifacts vs float (SQNR) and ONNX Runtime."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tvm
from conftest import MODELS, ort_run
from tvm import relax

from tvmdeploy import compile_model, load
from tvmdeploy.compiler.calibration import sqnr_db
from tvmdeploy.data import DIGITS_CALIBRATION, DIGITS_CNN, DIGITS_TEST
from tvmdeploy.compiler.host_eval import HostModel
from tvmdeploy.compiler.passes.quantize_int8 import (
    FoldBiasIntoInt32,
    QuantizeLayersInt8,
    QuantizeWeightsInt8,
    quantize_weight,
)
from tvmdeploy.compiler.quantization import (
    Int8Static,
    Int8WeightOnly,
    QuantizationError,
    parse_quantize_spec,
)

rng = np.random.default_rng(0)
W = rng.standard_normal((16, 8)).astype("float32")


def _function(body, shape=(1, 16)) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(body(bb, x))
        bb.emit_func_output(out)
    return bb.get()


def test_quantize_weight_is_symmetric_per_output_channel():
    q, scale = quantize_weight(W, out_axis=1)
    assert q.dtype == np.int8 and scale.shape == (1, 8)
    assert np.all(np.abs(q).max(axis=0) == 127)  # every channel uses its full range
    assert np.max(np.abs(q * scale - W)) <= scale.max() / 2 + 1e-7


def test_weight_only_pass_replaces_the_weight_with_an_int8_decode():
    q, scale = quantize_weight(W, out_axis=1)

    def before(bb, x):
        return relax.op.matmul(x, relax.const(W))

    def expected(bb, x):
        decoded = relax.op.multiply(relax.op.astype(relax.const(q), "float32"), relax.const(scale))
        return relax.op.matmul(x, decoded)

    tvm.ir.assert_structural_equal(QuantizeWeightsInt8()(_function(before)), _function(expected))


def test_static_pass_computes_int8_by_int8_into_int32():
    q, s_w = quantize_weight(W, out_axis=1)
    s_x = 0.05

    def before(bb, x):
        return relax.op.matmul(x, relax.const(W))

    def expected(bb, x):
        xq = relax.op.astype(relax.op.clip(relax.op.round(relax.op.divide(x, relax.const(np.float32(s_x)))), -128, 127), "int8")
        acc = relax.op.matmul(xq, relax.const(q), out_dtype="int32")
        return relax.op.multiply(relax.op.astype(acc, "float32"), relax.const((s_x * s_w).reshape(-1).astype("float32")))

    tvm.ir.assert_structural_equal(QuantizeLayersInt8({"matmul_0": s_x})(_function(before)), _function(expected))


def test_bias_joins_the_int32_accumulator():
    q, s_w = quantize_weight(W, out_axis=1)
    s_x = 0.05
    rescale = (s_x * s_w).reshape(-1).astype("float32")
    bias = rng.standard_normal(8).astype("float32")
    correction = rng.integers(-1000, 1000, 8).astype("int32")  # e.g. the packed kernels' zero-point term

    def quantized(bb, x, folded=False):
        xq = relax.op.astype(x, "int8")
        acc = relax.op.matmul(xq, relax.const(q), out_dtype="int32")
        if folded:
            steps = correction + np.round(bias.astype(np.float64) / rescale.astype(np.float64)).astype(np.int32)
            return relax.op.multiply(relax.op.astype(relax.op.add(acc, relax.const(steps)), "float32"), relax.const(rescale))
        acc = relax.op.add(acc, relax.const(correction))
        return relax.op.add(relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(rescale)), relax.const(bias))

    before = _function(quantized)
    after = FoldBiasIntoInt32()(before)
    tvm.ir.assert_structural_equal(after, _function(lambda bb, x: quantized(bb, x, folded=True)))
    # Same numbers up to half an accumulator step per channel.
    x = rng.integers(-128, 128, (1, 16)).astype(np.float32)
    exact = HostModel(before, "test").run([[x]])[0][0]
    folded = HostModel(after, "test").run([[x]])[0][0]
    assert np.all(np.abs(exact - folded) <= rescale / 2 + 1e-5)


def _top1(model, images):
    return np.array([np.argmax(model(x[None])[0]) for x in images])


def test_digits_int8_static_keeps_accuracy_and_shrinks_weights(tmp_path):
    test = np.load(DIGITS_TEST)
    fp32 = load(compile_model(DIGITS_CNN, output_dir=tmp_path / "fp32").artifact_dir)
    result = compile_model(
        DIGITS_CNN, output_dir=tmp_path / "int8", quantize=Int8Static(), calibration_data=DIGITS_CALIBRATION
    )
    report = result.manifest.extra["quantization"]
    assert report["accuracy"]["output_sqnr_db"][0] >= 20
    assert report["after"]["weight_bytes"] <= 0.3 * report["before"]["weight_bytes"]
    assert "QuantizeLayersInt8" in result.manifest.passes
    assert all(db >= 30 for db in report["layer_sqnr_db"].values()) and report["kept_float"] == []
    int8 = load(result.artifact_dir)
    accuracy_fp32 = 100 * np.mean(_top1(fp32, test["image"]) == test["label"])
    accuracy_int8 = 100 * np.mean(_top1(int8, test["image"]) == test["label"])
    assert accuracy_int8 >= accuracy_fp32 - 0.5  # the target: <= 0.5 point drop
    # On held-out data, logits stay close to float.
    ref = np.concatenate([fp32(x[None])[0] for x in test["image"][:64]])
    out = np.concatenate([int8(x[None])[0] for x in test["image"][:64]])
    assert sqnr_db(ref, out) >= 20


@pytest.mark.parametrize("name, input_name, shape", [("transformer_block.onnx", "tokens", (1, 16, 64)),
                                                      ("conv_bn_relu.onnx", "image", (1, 3, 32, 32))])
def test_int8_artifacts_track_onnx_runtime(tmp_path, name, input_name, shape):
    calibration = tmp_path / "calibration.npz"
    samples = rng.standard_normal((16, *shape[1:])).astype(np.float32)
    np.savez(calibration, **{input_name: samples})
    weight_only = load(compile_model(MODELS / name, output_dir=tmp_path / "w", quantize=Int8WeightOnly()).artifact_dir)
    static = load(
        compile_model(MODELS / name, output_dir=tmp_path / "s", quantize=Int8Static(), calibration_data=calibration).artifact_dir
    )
    x = rng.standard_normal(shape).astype(np.float32)
    reference = ort_run(MODELS / name, {input_name: x})[0]
    assert sqnr_db(reference, weight_only(x)[0]) >= 30
    assert sqnr_db(reference, static(x)[0]) >= 20


def test_layers_below_the_sqnr_floor_stay_float(tmp_path):
    # A floor above every layer's estimate keeps the whole model in float: bit-exact
    # with the unquantized artifact.
    result = compile_model(
        DIGITS_CNN, output_dir=tmp_path / "a", quantize=Int8Static(min_layer_sqnr_db=100.0),
        calibration_data=DIGITS_CALIBRATION,
    )
    report = result.manifest.extra["quantization"]
    assert report["kept_float"] == sorted(report["layers"])
    assert report["accuracy"]["output_sqnr_db"] == [None]  # identical outputs: infinite SQNR


def test_spec_parsing_and_clear_errors(tmp_path):
    assert parse_quantize_spec("int8", observer="percentile", percentile=99.9) == Int8Static("percentile", 99.9)
    assert parse_quantize_spec("int8-weight") == Int8WeightOnly()
    with pytest.raises(QuantizationError, match="takes no --observer"):
        parse_quantize_spec("int8-weight", observer="minmax")
    with pytest.raises(QuantizationError, match=r"percentile must be in \(50, 100\]"):
        Int8Static(observer="percentile", percentile=5)
    cases = [
        (["--quantize", "int8"], "pass --calibration-data FILE.npz"),
        (["--quantize", "fp16"], "fp16 is for CUDA presets"),
    ]
    for extra, message in cases:
        out = tmp_path / "art"
        proc = subprocess.run(
            [sys.executable, "-m", "tvmdeploy", "compile", str(DIGITS_CNN), "-o", str(out), *extra],
            capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 1 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not out.exists()


def test_qdq_model_from_onnx_runtime_runs_on_the_int8_path(tmp_path):
    qdq = MODELS / "digits_qdq.onnx"  # tests/fixtures/make_qdq_model.py
    result = compile_model(qdq, output_dir=tmp_path / "a")
    report = result.manifest.extra["quantization"]
    assert report["scheme"] == "qdq-int8" and len(report["layers"]) == 5
    assert report["after"]["weight_bytes"] <= 0.3 * report["before"]["weight_bytes"]
    model = load(result.artifact_dir)
    test = np.load(DIGITS_TEST)
    ours = np.concatenate([model(x[None])[0] for x in test["image"]])
    theirs = np.concatenate([ort_run(qdq, {"image": x[None]})[0] for x in test["image"]])
    assert sqnr_db(theirs, ours) >= 30
    agreement = np.mean(ours.argmax(axis=1) == theirs.argmax(axis=1))
    assert agreement >= 0.99


def test_entropy_observer_clips_outliers_and_keeps_digits_accuracy(tmp_path):
    from tvmdeploy.compiler.quantization.quantize import entropy_threshold

    values = np.abs(rng.standard_normal(100_000))
    values[:5] = 50.0  # a few outliers: max|x| would waste most of the int8 range on them
    assert 3.0 < entropy_threshold(values) < 6.0
    assert entropy_threshold(rng.uniform(0, 1, 100_000)) > 0.95  # nothing to clip
    result = compile_model(
        DIGITS_CNN, output_dir=tmp_path / "a", quantize=parse_quantize_spec("int8", observer="entropy"),
        calibration_data=DIGITS_CALIBRATION,
    )
    report = result.manifest.extra["quantization"]
    assert report["config"]["observer"] == "entropy"
    assert report["accuracy"]["drop"] <= 0.5 and report["accuracy"]["output_sqnr_db"][0] >= 20
