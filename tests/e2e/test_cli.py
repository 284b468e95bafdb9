"""The command line, as a user drives it: one clear line on stderr for every bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import MODELS
from onnx import TensorProto, helper

from tvmdeploy.cli.main import main


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tvmdeploy: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_targets_lists_presets_with_descriptions(capsys):
    code, out, _ = cli(capsys, "targets")
    assert code == 0
    names = {line.split()[0] for line in out.splitlines()}
    assert {"host", "x86_64-avx2", "aarch64-cortex-a72", "cuda-sm90"} <= names
    assert all(len(line.split(None, 1)) == 2 for line in out.splitlines())


def test_compile_run_inspect(capsys, tmp_path, digits_model, digits):
    images, labels = digits
    out_dir = tmp_path / "digits"
    code, out, err = cli(capsys, "compile", digits_model, "--target", "host", "-o", out_dir)
    assert code == 0, err
    assert f"artifact: {out_dir}" in out

    np.save(tmp_path / "x.npy", images[:1])
    code, out, err = cli(capsys, "run", out_dir, "--input", f"image={tmp_path / 'x.npy'}", "--save-outputs", tmp_path / "y.npz")
    assert code == 0, err
    assert "output logits: float32[1, 10]" in out and "latency: median" in out
    logits = np.load(tmp_path / "y.npz")["logits"]
    assert logits.argmax() == labels[0]

    np.savez(tmp_path / "all.npz", image=images[3:4])
    code, out, err = cli(capsys, "run", out_dir, "--input", tmp_path / "all.npz", "--repeat", "0")
    assert code == 0, err
    assert f"argmax {labels[3]}" in out

    code, out, err = cli(capsys, "run", out_dir, "--random-inputs", "--repeat", "2")
    assert code == 0 and "over 2 runs" in out

    code, out, err = cli(capsys, "inspect", out_dir)
    assert code == 0, err
    assert "digits_cnn for preset host" in out and "files verified" in out


def test_console_script_runs_in_runtime_only_mode(tmp_path, digits_artifact):
    exe = shutil.which("tvmdeploy", path=os.path.dirname(sys.executable)) or shutil.which("tvmdeploy")
    command = [exe] if exe else [sys.executable, "-m", "tvmdeploy.cli"]
    env = {k: v for k, v in os.environ.items() if k != "TVM_USE_RUNTIME_LIB"}  # thin by default
    proc = subprocess.run(
        [*command, "run", str(digits_artifact), "--random-inputs"], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "output logits" in proc.stdout
    # The process that ran the model mapped TVM's runtime library and not its compiler.
    assert "TVM libraries in this process: libtvm_runtime\n" in proc.stdout


def test_bad_inputs_get_one_clear_line(capsys, tmp_path, digits_artifact, digits):
    images, _ = digits
    code, _, err = cli(capsys, "compile", tmp_path / "missing.onnx")
    assert_one_line_error(code, err, "missing.onnx: no such file")

    (tmp_path / "notes.onnx").write_text("hello")
    code, _, err = cli(capsys, "compile", tmp_path / "notes.onnx")
    assert_one_line_error(code, err, "notes.onnx: not an ONNX model")

    graph = helper.make_graph(
        [helper.make_node("Celu", ["x"], ["y"], name="the_celu")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "celu.onnx")
    code, _, err = cli(capsys, "compile", tmp_path / "celu.onnx")
    assert_one_line_error(code, err, "celu.onnx", "Celu (node 'the_celu')")

    code, _, err = cli(capsys, "compile", MODELS / "mlp.onnx", "--target", "raspberry-pi")
    assert_one_line_error(code, err, "unknown target preset 'raspberry-pi'", "aarch64-cortex-a72")

    (tmp_path / "typo.toml").write_text('[target]\nkind = "llvm"\nmtriple = "x86_64-linux-gnu"\n[build]\ncross_compile = "gcc"\n')
    code, _, err = cli(capsys, "compile", MODELS / "mlp.onnx", "--target", tmp_path / "typo.toml")
    assert_one_line_error(code, err, "typo.toml: unknown key 'cross_compile' in [build]")

    code, _, err = cli(capsys, "compile", MODELS / "transformer_block_dynamic.onnx")
    assert_one_line_error(code, err, "'tokens' has symbolic dimension(s) batch, seq", "--input-shape tokens=1,1,64")

    code, _, err = cli(capsys, "compile", MODELS / "mlp.onnx", "--input-shape", "x:1,64")
    assert_one_line_error(code, err, "--input-shape 'x:1,64' must look like NAME=D0,D1,...")

    np.save(tmp_path / "wrong_shape.npy", images[:2])
    code, _, err = cli(capsys, "run", digits_artifact, "--input", f"image={tmp_path / 'wrong_shape.npy'}")
    assert_one_line_error(code, err, "input 'image' has shape [2, 1, 8, 8], expected [1, 1, 8, 8]")

    np.save(tmp_path / "wrong_dtype.npy", images[:1].astype(np.float64))
    code, _, err = cli(capsys, "run", digits_artifact, "--input", f"image={tmp_path / 'wrong_dtype.npy'}")
    assert_one_line_error(code, err, "input 'image' has dtype float64, expected float32")

    code, _, err = cli(capsys, "run", digits_artifact, "--input", f"picture={tmp_path / 'wrong_dtype.npy'}")
    assert_one_line_error(code, err, "--input names picture", "image: float32[1, 1, 8, 8]")

    code, _, err = cli(capsys, "run", digits_artifact)
    assert_one_line_error(code, err, "no inputs", "--random-inputs")

    tampered = tmp_path / "tampered"
    shutil.copytree(digits_artifact, tampered)
    with open(tampered / "model.so", "ab") as f:
        f.write(b"\0")
    code, _, err = cli(capsys, "run", tampered, "--random-inputs")
    assert_one_line_error(code, err, "model.so does not match the sha256")
    code, _, err = cli(capsys, "inspect", tampered)
    assert_one_line_error(code, err, "model.so does not match the sha256")


def test_debug_shows_the_traceback(capsys, tmp_path):
    with pytest.raises(Exception, match="no such file"):
        main(["--debug", "compile", str(tmp_path / "missing.onnx")])


def test_an_interrupt_swallowed_by_a_schedule_fallback_still_stops_the_compile(capsys, tmp_path, monkeypatch):
    """Raised inside a TVM callback, a KeyboardInterrupt comes back out of the FFI as an
    ordinary error, which the conv schedule's fallback (`except Exception`) would take for
    a kernel it does not cover: the compile must still stop, not write a slower artifact."""
    from tvmdeploy import errors
    from tvmdeploy.compiler.kernels import fp32_schedule

    monkeypatch.setattr(errors, "_interrupt_requested", False)

    def interrupted_inside_tvm(*args, **kwargs):
        errors.request_interrupt()  # what the CLI's signal handler does
        raise RuntimeError("KeyboardInterrupt")  # as the FFI hands it back

    monkeypatch.setattr(fp32_schedule, "schedule_conv2d", interrupted_inside_tvm)
    out_dir = tmp_path / "artifact"
    code, _, err = cli(capsys, "compile", MODELS / "conv_bn_relu.onnx", "-o", out_dir, "--target", "host")
    assert code == 130 and err.strip() == "tvmdeploy: interrupted", err
    assert not out_dir.exists() and not any(p.name.startswith(".") for p in tmp_path.iterdir())
