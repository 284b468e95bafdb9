"""Pruning end to end: torch exports pruned through compile_model, checked against ONNX
Runtime running the original model with the removed channels' contributions zeroed."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import MODELS, ort_run
from onnx import numpy_helper

from tvmdeploy import compile_model, load
from tvmdeploy.data import DIGITS_CALIBRATION, DIGITS_CNN, DIGITS_TEST
from tvmdeploy.compiler.pruning import (
    MagnitudePruning,
    PruningError,
    StructuredPruning,
    parse_prune_spec,
)
from tvmdeploy.runtime.weights_file import read_weights


def _zeroed_onnx(src, dst, edits) -> None:
    """Copy of `src` with initializer slices set to zero: {name: (axis, indices)} or
    {name: boolean keep-mask}."""
    model = onnx.load(src)
    for init in model.graph.initializer:
        if init.name not in edits:
            continue
        array = numpy_helper.to_array(init).copy()
        edit = edits[init.name]
        if isinstance(edit, np.ndarray):
            array[~edit] = 0
        else:
            axis, indices = edit
            index = [slice(None)] * array.ndim
            index[axis] = indices
            array[tuple(index)] = 0
        init.CopyFrom(numpy_helper.from_array(array, init.name))
    onnx.save(model, dst)


def _removed(layer: dict) -> np.ndarray:
    return np.setdiff1d(np.arange(layer["channels_before"]), layer["kept_channels"])


def _flattened(channels: np.ndarray, per_channel: int) -> np.ndarray:
    return (channels[:, None] * per_channel + np.arange(per_channel)).reshape(-1)


def _check_against_ort(tmp_path, model_path, result, edits, input_name, shape, atol=1e-4):
    reference_model = tmp_path / "reference.onnx"
    _zeroed_onnx(model_path, reference_model, edits)
    model = load(result.artifact_dir)
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = rng.standard_normal(shape).astype(np.float32)
        expected = ort_run(reference_model, {input_name: x})[0]
        np.testing.assert_allclose(model(x)[0], expected, rtol=1e-4, atol=atol)


def _layers(result) -> dict:
    return {row["layer"]: row for row in result.manifest.extra["pruning"]["layers"]}


def test_conv_bn_relu_then_pooled_classifier(tmp_path):
    model_path = MODELS / "conv_bn_relu.onnx"
    result = compile_model(model_path, output_dir=tmp_path / "a", prune=StructuredPruning(ratio=0.5))
    layers = _layers(result)
    assert layers["conv2d_0"]["channels_after"] == 8 and layers["conv2d_1"]["channels_after"] == 16
    assert layers["conv2d_0"]["consumers"] == ["conv2d_1"] and layers["conv2d_1"]["consumers"] == ["matmul_0"]
    edits = {
        "conv2.weight": (1, _removed(layers["conv2d_0"])),
        "fc.weight": (1, _removed(layers["conv2d_1"])),  # Gemm weight [out, in]
    }
    _check_against_ort(tmp_path, model_path, result, edits, "image", (1, 3, 32, 32))
    pruning = result.manifest.extra["pruning"]
    assert pruning["after"]["macs"] < 0.35 * pruning["before"]["macs"]  # both convs lose half their channels
    assert [s["layer"] for s in pruning["skipped"]] == ["matmul_0"]


def test_mlp_hidden_features(tmp_path):
    model_path = MODELS / "mlp.onnx"
    result = compile_model(model_path, output_dir=tmp_path / "a", prune=StructuredPruning(ratio=0.3, norm="l2"))
    layers = _layers(result)
    assert layers["matmul_0"]["channels_after"] == 90 and layers["matmul_1"]["channels_after"] == 45
    edits = {"fc2.weight": (1, _removed(layers["matmul_0"])), "fc3.weight": (1, _removed(layers["matmul_1"]))}
    _check_against_ort(tmp_path, model_path, result, edits, "x", (1, 64))


def test_residual_block_prunes_coupled_convs_together(tmp_path):
    model_path = MODELS / "residual_block.onnx"
    result = compile_model(model_path, output_dir=tmp_path / "a", prune=StructuredPruning(ratio=0.25))
    layers = _layers(result)
    coupled = layers["conv2d_0+conv2d_2"]  # the stem and the block's second conv share the residual stream
    assert coupled["channels_after"] == 12 and sorted(coupled["consumers"]) == ["conv2d_1", "conv2d_3"]
    stream = _removed(coupled)
    edits = {
        "conv_a.weight": (1, stream),
        "head.weight": (1, stream),
        "conv_b.weight": (1, _removed(layers["conv2d_1"])),
        "fc.weight": (1, _flattened(_removed(layers["conv2d_3"]), 8 * 8)),  # flatten of [8, 8, 8]
    }
    _check_against_ort(tmp_path, model_path, result, edits, "image", (1, 3, 16, 16))


def test_concat_of_two_branches(tmp_path):
    model_path = MODELS / "concat_block.onnx"
    result = compile_model(model_path, output_dir=tmp_path / "a", prune=StructuredPruning(ratio=0.5))
    layers = _layers(result)
    removed_mix_inputs = np.concatenate([_removed(layers["conv2d_0"]), 8 + _removed(layers["conv2d_1"])])
    edits = {
        "mix.weight": (1, removed_mix_inputs),
        "fc.weight": (1, _removed(layers["conv2d_2"])),
    }
    _check_against_ort(tmp_path, model_path, result, edits, "image", (1, 3, 8, 8))


def test_sensitivity_scan_meets_the_budget_on_the_digits_model(tmp_path):
    budget = 1.0
    result = compile_model(
        DIGITS_CNN, output_dir=tmp_path / "a", prune=StructuredPruning(max_accuracy_drop=budget),
        calibration_data=DIGITS_CALIBRATION,
    )
    pruning = result.manifest.extra["pruning"]
    accuracy = pruning["accuracy"]
    assert accuracy["metric"] == "top1_accuracy" and accuracy["samples"] == 300
    assert accuracy["drop"] <= budget
    assert pruning["after"]["macs"] <= 0.7 * pruning["before"]["macs"]  # the target: >= 30 % fewer FLOPs
    assert len(pruning["sensitivity"]) == 4 * 8  # 4 prunable layers x 8 ratios
    # On the held-out test split, the pruned artifact stays within the budget too (with
    # one point of slack: the budget was met on the calibration samples, not these).
    test = np.load(DIGITS_TEST)
    model = load(result.artifact_dir)
    predictions = np.array([np.argmax(model(x[None])[0]) for x in test["image"]])
    assert 100 * np.mean(predictions == test["label"]) >= 99.44 - budget - 1.0


def _match_initializers(onnx_path, arrays) -> dict:
    """For each lifted weight with zeros, the ONNX initializer it came from, as a
    keep-mask in the initializer's layout: the same values on the non-zeros, possibly
    transposed (Gemm/Linear) or scaled per output channel (a folded BatchNorm)."""
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(onnx_path).graph.initializer}
    edits = {}
    for array in arrays:
        if array.ndim < 2 or np.count_nonzero(array) == array.size:
            continue
        keep = array != 0
        matches = [
            (name, mask)
            for name, init in inits.items()
            for candidate, mask in ([(init, keep)] + ([(init.T, keep.T)] if init.ndim == 2 else []))
            if candidate.shape == array.shape and _same_up_to_channel_scale(array, candidate, keep)
        ]
        assert len(matches) == 1, f"weight {array.shape}: {len(matches)} initializers match"
        edits[matches[0][0]] = matches[0][1]
    return edits


def _same_up_to_channel_scale(array, candidate, keep) -> bool:
    if array.ndim == 2:
        return np.allclose(array[keep], candidate[keep], rtol=1e-6, atol=0)
    for row, source, on in zip(array.reshape(len(array), -1), candidate.reshape(len(array), -1), keep.reshape(len(array), -1)):
        if on.any():
            scale = row[on] / source[on]
            if not np.allclose(scale, scale[0], rtol=1e-4):
                return False
    return True


@pytest.mark.parametrize(
    "model_path, input_name, shape",
    [(DIGITS_CNN, "image", (1, 1, 8, 8)), (MODELS / "transformer_block.onnx", "tokens", (1, 16, 64))],
)
def test_magnitude_half_the_weights_shrinks_the_artifact(tmp_path, model_path, input_name, shape):
    result = compile_model(model_path, output_dir=tmp_path / "a", prune=MagnitudePruning(ratio=0.5))
    manifest = result.manifest
    assert manifest.weights == "weights.npz" and "weights.npz" in manifest.files
    pruning = manifest.extra["pruning"]
    dense = pruning["before"]["weight_bytes"]
    stored = (result.artifact_dir / "weights.npz").stat().st_size
    assert stored <= 0.6 * dense  # the target: >= 40 % fewer weight bytes
    # The zeros change the outputs (finite SQNR) without wrecking them; the exact numbers
    # are checked against ONNX Runtime with the same zeros below.
    assert 0 < pruning["accuracy"]["output_sqnr_db"][0] < float("inf")
    arrays = read_weights(result.artifact_dir / "weights.npz")
    layers = pruning["layers"]
    assert abs(sum(r["zeros"] for r in layers) / sum(r["weights"] for r in layers) - 0.5) < 1e-3
    assert sum(int(np.count_nonzero(a)) for a in arrays) == pruning["after"]["nonzero_params"]
    edits = _match_initializers(model_path, arrays)
    _check_against_ort(tmp_path, model_path, result, edits, input_name, shape)


def test_prune_spec_parsing_and_bad_values():
    assert parse_prune_spec("structured:0.3") == StructuredPruning(ratio=0.3)
    assert parse_prune_spec("magnitude:alpha=1.0,scope=layer") == MagnitudePruning(alpha=1.0, scope="layer")
    assert parse_prune_spec("structured", 1.0) == StructuredPruning(max_accuracy_drop=1.0)
    with pytest.raises(PruningError, match=r"ratio must be in \[0, 1\), got 1.5"):
        parse_prune_spec("structured:1.5")
    with pytest.raises(PruningError, match="unknown pruning scheme 'sparse'"):
        parse_prune_spec("sparse:0.5")
    with pytest.raises(PruningError, match="needs a ratio"):
        parse_prune_spec("structured")


def _cli(*args, tmp_path):
    return subprocess.run(
        [sys.executable, "-m", "tvmdeploy", *map(str, args)], capture_output=True, text=True, cwd=tmp_path, timeout=600
    )


def test_cli_errors_are_one_line_and_leave_no_artifact(tmp_path):
    wrong_name = tmp_path / "wrong_name.npz"
    np.savez(wrong_name, pixels=np.zeros((4, 1, 8, 8), np.float32))
    wrong_shape = tmp_path / "wrong_shape.npz"
    np.savez(wrong_shape, image=np.zeros((4, 1, 9, 9), np.float32))
    cases = [
        (["--prune", "structured:1.5"], "ratio must be in [0, 1), got 1.5"),
        (["--prune", "structured", "--max-accuracy-drop", "1"], "needs --calibration-data"),
        (["--prune", "structured", "--max-accuracy-drop", "1", "--calibration-data", wrong_name],
         "no array for input(s) 'image' (it has 'pixels')"),
        (["--prune", "structured", "--max-accuracy-drop", "1", "--calibration-data", wrong_shape],
         "input 'image' has shape [4, 1, 9, 9], expected [N, 1, 8, 8]"),
        (["--prune", "structured:0.9", "--max-accuracy-drop", "0.5", "--calibration-data", DIGITS_CALIBRATION],
         "more than --max-accuracy-drop 0.5"),
    ]
    for extra, message in cases:
        out = tmp_path / "art"
        proc = _cli("compile", DIGITS_CNN, "-o", out, *extra, tmp_path=tmp_path)
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], proc.stderr
        assert not out.exists()


def test_cli_prunes_and_reports(tmp_path):
    out = tmp_path / "art"
    proc = _cli("compile", MODELS / "conv_bn_relu.onnx", "-o", out, "--prune", "structured:0.25", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "pruning: structured: MACs" in proc.stdout and "not pruned: matmul_0" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert "PruneChannels" in manifest["passes"]
    assert manifest["extra"]["pruning"]["config"] == {
        "ratio": 0.25, "norm": "l1", "max_accuracy_drop": None, "type": "StructuredPruning", "version": 1,
    }


def test_tune_with_the_same_pruning_tunes_the_kernels_compile_builds(tmp_path):
    from tvmdeploy.compiler import tune_model
    from tvmdeploy.compiler.tuning.tuner import TuningBudget

    model_path = MODELS / "conv_bn_relu.onnx"
    prune = StructuredPruning(ratio=0.5)
    report = tune_model(model_path, budget=TuningBudget(trials=4), cache_dir=tmp_path / "cache", prune=prune)
    tuned = sum(t.source == "tuned" for t in report.tasks)
    assert report.trials > 0 and tuned > 0
    pruned = compile_model(model_path, output_dir=tmp_path / "a", cache_dir=tmp_path / "cache", prune=prune)
    assert pruned.manifest.extra["tuning"]["kernels_scheduled_from_cache"] >= tuned
    # The unpruned model's convolutions have other shapes: those records do not apply.
    plain = compile_model(model_path, output_dir=tmp_path / "b", cache_dir=tmp_path / "cache")
    assert plain.manifest.extra["tuning"]["kernels_scheduled_from_cache"] < tuned
