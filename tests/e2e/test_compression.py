"""Low-rank factorization, clustering and their combination with pruning and int8, end to
end on the digits CNN (real weights, held-out split) and the MLP fixture against ONNX
Runtime; bad options as one-line errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import MODELS, ort_run
from onnx import numpy_helper

from tvmdeploy import compile_model, load
from tvmdeploy.cli.main import main
from tvmdeploy.compiler.compression import Clustering, LowRank
from tvmdeploy.compiler.compression.cluster import cluster_weight
from tvmdeploy.compiler.pruning import StructuredPruning
from tvmdeploy.compiler.quantization import Int8Static
from tvmdeploy.data import DIGITS_CALIBRATION, DIGITS_CNN, DIGITS_TEST
from tvmdeploy.runtime.weights_file import WEIGHTS_FILE


def _test_accuracy(artifact) -> float:
    model, data = load(artifact), np.load(DIGITS_TEST)
    hits = [np.argmax(model(data["image"][i : i + 1])[0]) == data["label"][i] for i in range(len(data["label"]))]
    return 100.0 * float(np.mean(hits))


@pytest.fixture(scope="module")
def fp32_test_accuracy(tmp_path_factory) -> float:
    out = tmp_path_factory.mktemp("fp32") / "a"
    compile_model(DIGITS_CNN, output_dir=out)
    return _test_accuracy(out)


def _rows(result) -> list[dict]:
    return result.manifest.extra["size_accuracy"]["rows"]


def test_lowrank_under_a_one_point_budget_cuts_macs(tmp_path, fp32_test_accuracy):
    result = compile_model(
        DIGITS_CNN, output_dir=tmp_path / "a", compress=[LowRank(max_accuracy_drop=1.0)], calibration_data=DIGITS_CALIBRATION
    )
    first, last = _rows(result)[0], _rows(result)[-1]
    assert last["macs"] <= 0.7 * first["macs"], (last, first)
    assert last["drop"] <= 1.0
    layers = result.manifest.extra["compression"]["layers"]["lowrank"]
    assert any(row["rank"] for row in layers) and "FactorizeLowRank" in result.manifest.passes
    # held out: the factored model keeps its accuracy within 2 points
    assert _test_accuracy(tmp_path / "a") >= fp32_test_accuracy - 2.0


def test_four_bit_clustering_stores_an_eighth_and_keeps_accuracy(tmp_path, fp32_test_accuracy):
    result = compile_model(DIGITS_CNN, output_dir=tmp_path / "a", compress=[Clustering(bits=4)], calibration_data=DIGITS_CALIBRATION)
    first, last = _rows(result)[0], _rows(result)[-1]
    assert last["stored_bytes"] <= 0.15 * first["stored_bytes"]
    assert last["drop"] <= 0.5
    assert result.manifest.weights == WEIGHTS_FILE
    assert (tmp_path / "a" / WEIGHTS_FILE).stat().st_size <= 0.2 * first["weight_bytes"]
    assert _test_accuracy(tmp_path / "a") >= fp32_test_accuracy - 0.5


def test_prune_lowrank_cluster_int8_under_one_budget(tmp_path, fp32_test_accuracy):
    result = compile_model(
        DIGITS_CNN, output_dir=tmp_path / "a", prune=StructuredPruning(max_accuracy_drop=1.0),
        compress=[LowRank(max_accuracy_drop=1.0), Clustering(max_accuracy_drop=1.0)],
        quantize=Int8Static(), max_accuracy_drop=1.0, calibration_data=DIGITS_CALIBRATION,
    )
    rows = _rows(result)
    assert next(r["step"] for r in rows) == "original" and rows[-1]["step"] == "int8"
    assert rows[-1]["stored_bytes"] <= 0.15 * rows[0]["stored_bytes"]
    assert rows[-1]["drop"] <= 1.0
    budget = result.manifest.extra["compression"]["budget"]
    assert budget["max_accuracy_drop"] == 1.0 and budget["final_drop"] == rows[-1]["drop"]
    # the order is fixed: prune -> (cluster, low-rank) -> int8
    passes = result.manifest.passes
    assert passes.index("QuantizeLayersInt8") > max(passes.index(p) for p in ("ClusterWeights", "FactorizeLowRank"))
    # the artifact computes what the table measured, on the same samples
    model, data = load(tmp_path / "a"), np.load(DIGITS_CALIBRATION)
    hits = [np.argmax(model(data["image"][i : i + 1])[0]) == data["label"][i] for i in range(len(data["label"]))]
    assert abs(100.0 * np.mean(hits) - rows[-1]["accuracy"]) <= 100.0 / len(hits) + 1e-9
    # Held out, the budget does not fully carry over: it is met on the calibration samples
    # (training images the model gets 100 % of), measured 97.2 % vs 99.4 % on this split
    # (top-1 alone in the search: 95.6 %). A guard against worse, not the budget itself;
    # held-out calibration data is what gives a held-out guarantee.
    assert _test_accuracy(tmp_path / "a") >= fp32_test_accuracy - 3.0


def test_clustered_mlp_matches_onnx_runtime_on_the_numpy_clustered_weights(tmp_path):
    """Reference: the ONNX model with every Gemm weight replaced by numpy k-means (the same
    algorithm, per layer), run by ONNX Runtime."""
    model = onnx.load(MODELS / "mlp.onnx")
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.ndim == 2:
            init.CopyFrom(numpy_helper.from_array(cluster_weight(array, 3, 0), init.name))
    reference = tmp_path / "clustered.onnx"
    onnx.save(model, reference)
    compile_model(MODELS / "mlp.onnx", output_dir=tmp_path / "a", compress=[Clustering(bits=3)])
    artifact = load(tmp_path / "a")
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    np.testing.assert_allclose(artifact(x)[0], ort_run(reference, {"x": x})[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--compress", "cluster:9"], "cluster bits must be a whole number in 2..8"),
        (["--compress", "cluster:1"], "cluster bits must be a whole number in 2..8"),
        (["--compress", "lowrank:rank=500"], "saves compute in no layer"),
        (["--compress", "lowrank:1.5"], "rank ratio must be in (0, 1)"),
        (["--compress", "lowrank", "--max-accuracy-drop", "1"], "needs --calibration-data"),
        (["--compress", "cluster"], "clustering needs bits"),
        (["--compress", "zip:3"], "unknown compression scheme 'zip'"),
        (["--compress", "lowrank:0.5", "--compress", "lowrank:0.3"], "given twice"),
    ],
)
def test_bad_compression_options_are_one_line_errors(tmp_path, capsys, options, message):
    code = main(["compile", str(DIGITS_CNN), "-o", str(tmp_path / "a"), *options])
    _, err = capsys.readouterr()
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "a").exists()


def test_a_pruned_qdq_model_still_runs_its_quantized_layers_in_int8(tmp_path):
    """--prune / --compress on a QDQ model: its Q/DQ layers still go to int8 compute."""
    from tvmdeploy.compiler.pruning import MagnitudePruning

    result = compile_model(MODELS / "digits_qdq.onnx", output_dir=tmp_path / "a", prune=MagnitudePruning(ratio=0.3))
    assert result.manifest.extra["quantization"]["scheme"] == "qdq-int8"
    assert "QuantizeLayersInt8" in result.manifest.passes and result.manifest.weights == WEIGHTS_FILE
