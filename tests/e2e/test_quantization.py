"""int8 quantization: Before/Expected per pass; artifacts vs float (SQNR) and ONNX Runtime."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import MODELS, ort_run

from tvmdeploy import compile_model, load
from tvmdeploy.compiler.calibration import sqnr_db
from tvmdeploy.data import DIGITS_CALIBRATION, DIGITS_CNN, DIGITS_TEST
from tvmdeploy.compiler.quantization import (
    Int8Static,
    Int8WeightOnly,
    QuantizationError,
    parse_quantize_spec,
)

rng = np.random.default_rng(0)
W = rng.standard_normal((16, 8)).astype("float32")


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
    # The manifest lists what ran, in order: NHWC for the packed kernels, then int8, then
    # the bias folded into the int32 accumulator.
    shrink = [p for p in result.reports.quantization.passes if p in ("ConvertLayout", "QuantizeLayersInt8", "FoldBiasIntoInt32")]
    assert shrink == (["ConvertLayout"] if report["kernels"]["packed"] else []) + ["QuantizeLayersInt8", "FoldBiasIntoInt32"]
    assert result.manifest.passes == result.reports.passes()
    assert result.reports.quantization.passes == [p for p in result.reports.quantization.passes if p in shrink + ["FoldConstant"]]
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
    # Nothing was quantized, so no quantization pass is listed.
    assert report["passes"] == []
    assert not {"QuantizeLayersInt8", "FoldBiasIntoInt32"} & set(result.manifest.passes)
    fp32 = compile_model(DIGITS_CNN, output_dir=tmp_path / "fp32").manifest
    assert result.manifest.passes == fp32.passes


def test_spec_parsing_and_clear_errors(tmp_path):
    assert parse_quantize_spec("int8", observer="percentile", percentile=99.9) == Int8Static("percentile", 99.9)
    assert parse_quantize_spec("int8-weight") == Int8WeightOnly()
    with pytest.raises(QuantizationError, match="takes no --observer"):
        parse_quantize_spec("int8-weight", observer="minmax")
    with pytest.raises(QuantizationError, match=r"percentile must be in \(50, 100\]"):
        Int8Static(observer="percentile", percentile=5)
    # Activation scales and SmoothQuant: per-token + smoothing by default, "none" turns smoothing off.
    assert Int8Static().activations == "auto" and Int8Static().smooth_alpha == 0.5
    assert parse_quantize_spec("int8", activations="static", smooth_alpha="none") == Int8Static(
        activations="static", smooth_alpha=None
    )
    assert parse_quantize_spec("int8", smooth_alpha="0.8").smooth_alpha == 0.8
    for bad, message in [
        (dict(smooth_alpha=1.5), r"smooth_alpha must be in \[0, 1\]"),
        (dict(smooth_alpha=-0.1), r"smooth_alpha must be in \[0, 1\]"),
        (dict(activations="per-channel"), "activations must be one of auto, static, dynamic"),
    ]:
        with pytest.raises(QuantizationError, match=message):
            Int8Static(**bad)
    with pytest.raises(QuantizationError, match="smooth_alpha must be a number in \\[0, 1\\] or none, not 'strong'"):
        parse_quantize_spec("int8", smooth_alpha="strong")
    with pytest.raises(QuantizationError, match="takes no --activations, --smooth-alpha"):
        parse_quantize_spec("int8-weight", activations="static", smooth_alpha="0.5")
    cases = [
        (["--quantize", "int8"], "pass --calibration-data FILE.npz"),
        (["--quantize", "int8", "--smooth-alpha", "1.5"], "smooth_alpha must be in [0, 1]"),
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
