"""int8 speed on this machine: tvmdeploy int8 vs tvmdeploy fp32 vs ONNX Runtime (fp32 and
its own int8), all in one interleaved bench run per model. Not a test: it tunes for
minutes to an hour and prints ratios (these machines are noisy; only ratios within one
run mean anything).

    .venv/bin/python tests/benchmarks/int8_speed.py --model digits --trials 300
    .venv/bin/python tests/benchmarks/int8_speed.py --model resnet50 --minutes 20

Models: the digits CNN (calibrated on its training-split images), and light ResNet-50
from the onnx package with seeded random weights (calibrated on 16 standard-normal
images). ONNX Runtime's int8 models come from `quantize_static` (QDQ, per-channel int8
weights) on the same calibration data, with uint8 activations (the combination its x86
kernels are fastest with) and with int8 activations; the faster one is the peer the
issue's target is judged against. Run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))


def _calibration(model: str, out: Path) -> tuple[Path, Path, str]:
    """(onnx model, calibration .npz, input name)."""
    if model == "digits":
        return ROOT / "tvmdeploy/data/digits_cnn.onnx", ROOT / "tvmdeploy/data/digits_calibration.npz", "image"
    from conftest import randomized_light_model

    onnx_path = randomized_light_model(model, out)
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inits = {t.name for t in graph.initializer}
    inp = next(i for i in graph.input if i.name not in inits)
    shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
    samples = np.random.default_rng(0).standard_normal((16, *shape[1:])).astype(np.float32)
    calibration = out / "calibration.npz"
    np.savez(calibration, **{inp.name: samples})
    return onnx_path, calibration, inp.name


def _ort_int8(onnx_path: Path, calibration: Path, name: str, out: Path, activations: str) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    samples = np.load(calibration)[name][:100]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{name: samples[i: i + 1]} for i in range(len(samples))])

        def get_next(self):
            return next(self._it, None)

    prepared = out / "prepared.onnx"
    if not prepared.exists():
        quant_pre_process(str(_opset13(onnx_path, out)), str(prepared))
    path = out / f"ort_{activations}.onnx"
    quantize_static(
        str(prepared), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8 if activations == "u8" else QuantType.QInt8, weight_type=QuantType.QInt8,
    )
    return path


def _opset13(onnx_path: Path, out: Path) -> Path:
    """The model at opset 13 or later: ONNX Runtime cannot load its own quantize_static
    output for an opset-9 model (DequantizeLinear with an int32 zero point)."""
    import onnx
    from onnx import version_converter

    model = onnx.load(str(onnx_path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset >= 13:
        return onnx_path
    converted = out / f"{onnx_path.stem}-opset13.onnx"
    onnx.save(version_converter.convert_version(model, 13), str(converted))
    return converted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits", help="digits, or a light_*.onnx name (resnet50, squeezenet...)")
    parser.add_argument("--trials", type=int, default=300, help="tuning trials per variant")
    parser.add_argument("--minutes", type=float, default=None, help="tuning time budget per variant")
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--work", default=None, help="folder for models, artifacts and the tuning cache")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="tvmdeploy-int8-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    onnx_path, calibration, name = _calibration(args.model, work)
    peers = [_ort_int8(onnx_path, calibration, name, work, act) for act in ("u8", "s8")]
    tvmdeploy = [sys.executable, "-m", "tvmdeploy"]
    budget = ["--tune-trials", str(args.trials)] + (["--time-budget", str(args.minutes)] if args.minutes else [])
    # int8 first: a model the int8 path cannot take fails before an hour of fp32 tuning.
    variants = {"int8": ["--quantize", "int8", "--calibration-data", str(calibration)], "fp32": []}
    for variant, options in variants.items():
        out = work / f"{args.model}-{variant}"
        subprocess.run(
            [*tvmdeploy, "compile", str(onnx_path), *options, *budget, "--cache-dir", str(work / "cache"), "-o", str(out)],
            check=True,
        )
    subprocess.run(
        [*tvmdeploy, "bench", str(work / f"{args.model}-int8"), "--compare", str(work / f"{args.model}-fp32"),
         "--compare", "onnxruntime", *[arg for p in peers for arg in ("--compare", f"onnxruntime:{p}")],
         "--repeat", str(args.repeat), "--chart", str(work / f"{args.model}-int8.png")],
        check=True,
    )


if __name__ == "__main__":
    main()
