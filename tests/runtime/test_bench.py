"""The bench command: both runtimes on the same inputs, numbers reported, chart written.

Speed itself is never asserted here (noisy machines); only that the measurement is made
and that both runtimes computed the same thing.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MODELS

from tvmdeploy.runtime.bench import bench_artifact, write_chart
from tvmdeploy.cli.main import main
from tvmdeploy.errors import TvmDeployError


def test_bench_against_onnxruntime(digits_artifact, tmp_path):
    report = bench_artifact(digits_artifact, repeat=4, warmup=1, threads=1)
    assert [t.name for t in report.timings] == ["tvmdeploy", "onnxruntime"]
    assert all(len(t.seconds) == 4 and t.median_ms > 0 and t.p90_ms >= t.median_ms for t in report.timings)
    assert report.max_abs_diff["onnxruntime"] < 1e-4
    # The ratio is tvmdeploy's median over the peer's, from the raw timings.
    tvm_s, ort_s = (np.median(t.seconds) for t in report.timings)
    assert report.ratio("onnxruntime") == pytest.approx(tvm_s / ort_s, rel=1e-9)
    chart = write_chart(report, tmp_path / "chart.png")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_cli_prints_table_and_chart(capsys, digits_artifact, tmp_path):
    code = main(["bench", str(digits_artifact), "--repeat", "3", "--warmup", "1", "--chart", str(tmp_path / "c.png")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "tvmdeploy/onnxruntime latency ratio" in out and (tmp_path / "c.png").is_file()


def test_bench_refuses_a_different_model(digits_artifact):
    with pytest.raises(TvmDeployError, match=r"not the same model"):
        bench_artifact(digits_artifact, model_path=MODELS / "mlp.onnx", repeat=1)
