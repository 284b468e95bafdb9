"""Validation up front: every malformed input is one line (exit 1), never a traceback, the
"unexpected error" path (exit 2), a TVM `Check failed`, a hang or an unbounded read.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import MODELS, ort_run
from onnx import TensorProto, helper

from tvmdeploy import compile_model
from tvmdeploy.cli.main import main
from tvmdeploy.compiler.calibration import CalibrationError, load_calibration
from tvmdeploy.compiler.frontend.onnx import importer_max_opset
from tvmdeploy.errors import ModelImportError, PresetError
from tvmdeploy.runtime import load
from tvmdeploy.runtime.manifest import TensorSpec


def _cli_error(capsys, *argv) -> str:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert captured.err.startswith("tvmdeploy: error: ") and captured.err.count("\n") == 1, captured.err
    assert "unexpected" not in captured.err and "Check failed" not in captured.err
    return captured.err


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


def _scale_model(opset: int = 17, in_type=TensorProto.FLOAT, in_shape=(1, 4)) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", in_type, list(in_shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3] if tuple(in_shape) == () else [1, 4])
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0]) if tuple(in_shape) == () else (
        helper.make_tensor("scale", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])
    )
    nodes = [helper.make_node("Mul", ["x", "scale"], ["y"], name="times_scale")]
    graph = helper.make_graph(nodes, "scale", [x], [y], [scale])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_opset_beyond_the_importer_is_refused(tmp_path, capsys):
    ceiling = importer_max_opset()
    path = _save(_scale_model(opset=99, in_shape=()), tmp_path / "future.onnx")
    err = _cli_error(capsys, "compile", path, "-o", tmp_path / "out")
    assert f"ONNX opset 99 is newer than the highest TVM's importer knows ({ceiling})" in err
    assert not (tmp_path / "out").exists()


def test_two_nodes_writing_one_tensor_name_both(tmp_path, capsys):
    model = _scale_model(in_shape=())
    model.graph.node.append(helper.make_node("Relu", ["x"], ["y"], name="second_writer"))
    err = _cli_error(capsys, "compile", _save(model, tmp_path / "ssa.onnx"))
    assert "tensor 'y' is written by two nodes, 'times_scale' (Mul) and 'second_writer' (Relu)" in err


def test_output_without_a_declared_shape_is_accepted_as_onnxruntime_does(tmp_path):
    model = _scale_model(in_shape=())
    model.graph.output[0].type.tensor_type.ClearField("shape")  # the checker alone would refuse it
    result = compile_model(_save(model, tmp_path / "shapeless.onnx"), "host", output_dir=tmp_path / "art")
    assert result.manifest.outputs == [TensorSpec("y", (3,), "float32")]
    model.graph.node.append(helper.make_node("Relu", ["x", "x"], ["z"], name="bad_relu"))  # still caught
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, []))
    with pytest.raises(ModelImportError, match=r"not a valid ONNX model: .*bad_relu"):
        compile_model(_save(model, tmp_path / "shapeless_bad.onnx"), "host", output_dir=tmp_path / "art2")


def test_checker_failure_names_the_node(tmp_path, capsys):
    model = _scale_model(in_shape=())
    model.graph.node.append(helper.make_node("Relu", ["x", "x"], ["z"], name="relu_with_two_inputs"))
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, []))
    err = _cli_error(capsys, "compile", _save(model, tmp_path / "bad.onnx"))
    assert "not a valid ONNX model" in err and "relu_with_two_inputs" in err


def test_device_and_fifo_model_files_are_never_read(tmp_path, capsys):
    err = _cli_error(capsys, "compile", "/dev/zero")
    assert "/dev/zero: not a regular file" in err
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)  # reading it would block forever
    assert "not a regular file" in _cli_error(capsys, "compile", fifo)


def test_oversized_model_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.onnx"
    with open(path, "wb") as f:
        f.truncate(3 << 30)  # sparse: no disk used
    with pytest.raises(ModelImportError, match=r"3.0 GiB, more than the 2 GiB an ONNX file can hold"):
        compile_model(path, "host", output_dir=tmp_path / "out")


def test_scalar_input_runs_end_to_end(tmp_path, capsys):
    path = _save(_scale_model(in_shape=()), tmp_path / "scalar.onnx")
    result = compile_model(path, "host", output_dir=tmp_path / "art")
    assert result.manifest.inputs == [TensorSpec("x", (), "float32")]
    x = np.array(1.5, dtype=np.float32)
    (out,) = load(result.artifact_dir)(x)
    np.testing.assert_allclose(out, ort_run(path, {"x": x})[0], rtol=1e-6)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(result.artifact_dir), "--input", f"x={tmp_path / 'x.npy'}", "--repeat", "1"]) == 0
    assert "output y: float32[3]  min 1.5  max 4.5" in capsys.readouterr().out


@pytest.mark.parametrize("elem_type, name", [(TensorProto.INT4, "int4"), (TensorProto.UINT4, "uint4"), (TensorProto.BFLOAT16, "bfloat16")])
def test_sub_byte_and_numpy_less_inputs_are_refused_at_compile_time(tmp_path, capsys, elem_type, name):
    x = helper.make_tensor_value_info("x", elem_type, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], "g", [x], [y])
    path = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), tmp_path / "narrow.onnx")
    err = _cli_error(capsys, "compile", path, "-o", tmp_path / "out")
    assert f"input 'x' has element type {name}, which the loader cannot pass" in err


def test_calibration_with_nan_or_inf_names_input_and_sample(tmp_path, capsys):
    images = np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32)
    images[5, 0, 3, 3] = np.inf
    images[6, 0, 0, 0] = np.nan
    np.savez(tmp_path / "calib.npz", image=images)
    spec = [TensorSpec("image", (1, 1, 8, 8), "float32")]
    with pytest.raises(CalibrationError, match=r"input 'image' sample 5 holds NaN or Inf \(2 of 8 samples do\)"):
        load_calibration(tmp_path / "calib.npz", spec)
    from tvmdeploy.data import DIGITS_CNN

    err = _cli_error(
        capsys, "compile", DIGITS_CNN, "-o", tmp_path / "q", "--quantize", "int8", "--calibration-data", tmp_path / "calib.npz"
    )
    assert "sample 5 holds NaN or Inf" in err


def test_calibration_for_a_scalar_input(tmp_path):
    np.savez(tmp_path / "calib.npz", x=np.arange(4, dtype=np.float32))
    calibration = load_calibration(tmp_path / "calib.npz", [TensorSpec("x", (), "float32")])
    assert [s[0].shape for s in calibration.samples] == [()] * 4


PRESETS = [
    ('[target]\nkind = "llvm"\nmtriple = "x86_64-linux-gnu"\nmcpu = ["haswell"]\nnum-cores = 2\n', r"'mcpu' in \[target\] must be a string, not \['haswell'\]"),
    ('[target]\nkind = "llvm"\nmtriple = "x86_64-linux-gnu"\nmcpu = 7\nnum-cores = 2\n', r"'mcpu' in \[target\] must be a string, not 7"),
    ('build = "fast"\n[target]\nkind = "llvm"\nnum-cores = 2\n', r"\[build\] must be a table"),
    ('[target]\nkind = "llvm"\nnum-cores = 2\n[build]\nlinker_options = "-static"\n', r"'linker_options' in \[build\] must be a list of strings"),
    ('[target]\nkind = "llvm"\nnum-cores = "2"\n', r"'num-cores' in \[target\] must be a positive integer"),
    ('[target]\nkind = "llvm"\nnum-cores = 0\n', r"'num-cores' in \[target\] must be a positive integer"),
    ('[target]\nkind = "llvm"\nnum-cores = 2\n[build]\nthreads = true\n', r"'threads' in \[build\] must be a non-negative integer"),
    ('detect = "mcpu"\n[target]\nkind = "llvm"\nnum-cores = 2\n', r"'detect' must be a list of strings"),
    ('target = [1]\n', r"\[target\] must be a table"),
    ('[target]\nkind = "llvm"\nmtriple = "x86_64-linux-gnu"\nmcpu = "haswell"\n', r"\[target\] needs 'num-cores'"),
]


@pytest.mark.parametrize("text, message", PRESETS)
def test_malformed_presets_are_one_line(tmp_path, capsys, text, message):
    preset = tmp_path / "p.toml"
    preset.write_text(text)
    import re

    err = _cli_error(capsys, "compile", MODELS / "mlp.onnx", "--target", preset, "-o", tmp_path / "out")
    assert re.search(message, err), err


def test_num_cores_is_filled_from_the_preset_threads(tmp_path):
    from tvmdeploy.compiler.presets import load_preset, resolve_preset

    preset = tmp_path / "p.toml"
    preset.write_text('[target]\nkind = "llvm"\nmtriple = "x86_64-linux-gnu"\nmcpu = "haswell"\n[build]\nthreads = 3\n')
    resolved, target = resolve_preset(load_preset(str(preset)))
    assert resolved.target["num-cores"] == 3 and int(target.attrs["num-cores"]) == 3
    preset.write_text('[target]\nkind = "llvm"\nmtriple = "x86_64-linux-gnu"\n')
    with pytest.raises(PresetError, match=r"or detect = \[\"num-cores\"\]"):
        resolve_preset(load_preset(str(preset)))


def test_input_shape_beyond_int64(capsys):
    err = _cli_error(capsys, "compile", MODELS / "mlp.onnx", "--input-shape", "x=1,99999999999999999999999")
    assert "every dimension must be between 1 and 2147483647" in err


def test_save_outputs_into_a_missing_folder_fails_before_running(digits_artifact, tmp_path, capsys):
    err = _cli_error(capsys, "run", digits_artifact, "--random-inputs", "--save-outputs", tmp_path / "no" / "out.npz")
    assert "the folder" in err and "does not exist" in err
    assert capsys.readouterr().out == ""  # the model never ran


def test_disk_full_names_the_root_cause(digits_artifact, capsys):
    err = _cli_error(capsys, "run", digits_artifact, "--random-inputs", "--repeat", "0", "--save-outputs", "/dev/full")
    assert "No space left on device (ENOSPC)" in err


def test_broken_pipe_ends_quietly(digits_artifact):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tvmdeploy.cli", "inspect", str(digits_artifact)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader is gone before the first line is written (like `| head -0`)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert err == ""


def _in_small_tmpfs(tmp_path: Path, size: str, argv: list[str]) -> subprocess.CompletedProcess:
    """Run argv with tmp_path/small a tmpfs of `size` (a private mount namespace): a real full disk."""
    if os.geteuid() != 0 or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs root and mount namespaces for a small tmpfs")
    small = tmp_path / "small"
    small.mkdir()
    script = f'mount -t tmpfs -o size={size} tmpfs {small} && exec "$@"'
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *argv], capture_output=True, text=True, timeout=600)


def test_full_disk_at_the_link_step_names_the_root_cause(tmp_path):
    """The linker's "No space left on device" sits above the command line TVM reports last."""
    out = tmp_path / "small" / "out"
    proc = _in_small_tmpfs(tmp_path, "16k", [sys.executable, "-m", "tvmdeploy.cli", "compile", str(MODELS / "mlp.onnx"), "-o", str(out)])
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("tvmdeploy: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "exporting the library" in proc.stderr and "No space left on device (ENOSPC)" in proc.stderr


def test_full_disk_at_the_manifest_write_is_one_line(tmp_path):
    """Out of inodes (tmpfs nr_inodes=3: its root, the staging folder, model.so): the
    manifest is the write that fails, and the old exit-2 path is not taken."""
    out = tmp_path / "small" / "out"
    proc = _in_small_tmpfs(tmp_path, "64m,nr_inodes=3", [sys.executable, "-m", "tvmdeploy.cli", "compile", str(MODELS / "mlp.onnx"), "-o", str(out)])
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("tvmdeploy: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "manifest.json.tmp: No space left on device (ENOSPC)" in proc.stderr


@pytest.mark.parametrize("threads", ["-1", "65536"])
def test_thread_counts_out_of_range_are_one_line(digits_artifact, threads):
    # In a child process: 65536 threads used to abort the whole process (std::terminate).
    done = subprocess.run(
        [sys.executable, "-m", "tvmdeploy.cli", "run", str(digits_artifact), "--random-inputs", "--threads", threads],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr == f"tvmdeploy: error: threads={threads}: give 0 (one per core) up to 1024\n"


def test_negative_repeat_is_refused(digits_artifact, capsys):
    assert "--repeat -3" in _cli_error(capsys, "run", digits_artifact, "--random-inputs", "--repeat", "-3")


def test_an_npz_of_object_arrays_is_one_line(digits_artifact, tmp_path, capsys):
    path = tmp_path / "objects.npz"
    np.savez(path, image=np.array([{"a": 1}], dtype=object))
    err = _cli_error(capsys, "run", digits_artifact, "--input", path)
    assert "holds 'image', which is not a plain numeric array" in err


def test_a_library_that_does_not_load_is_one_line(digits_artifact, tmp_path, capsys):
    """Bytes that hash as the manifest says but are no library (the manifest rewritten to match)."""
    import hashlib
    import json
    import shutil

    folder = tmp_path / "art"
    shutil.copytree(digits_artifact, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    library = folder / manifest["library"]
    library.write_bytes(np.random.default_rng(0).bytes(20000))
    manifest["files"][manifest["library"]] = hashlib.sha256(library.read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    err = _cli_error(capsys, "run", folder, "--random-inputs")
    assert f"{manifest['library']} is not a library this machine can load" in err and "invalid ELF header" in err


def test_a_manifest_edited_to_other_output_shapes_is_one_line(digits_artifact, tmp_path, capsys):
    import json
    import shutil

    folder = tmp_path / "art"
    shutil.copytree(digits_artifact, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    true_shape = manifest["outputs"][0]["shape"]
    manifest["outputs"][0]["shape"] = [1, 3]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    err = _cli_error(capsys, "run", folder, "--random-inputs")
    assert f"returned {manifest['outputs'][0]['name']} with shape {true_shape}, but manifest.json says [1, 3]" in err


def test_a_graph_without_nodes_says_so(tmp_path, capsys):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([], "passthrough", [x], [x])
    path = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "empty_graph.onnx")
    err = _cli_error(capsys, "compile", path, "-o", tmp_path / "out")
    assert "graph 'passthrough' has no nodes, so there is nothing to compile" in err


@pytest.mark.parametrize("content", [b"\x00\xff not a protobuf at all", b"ir_version: 8\n"])
def test_bytes_that_are_no_model_still_say_so(tmp_path, capsys, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    assert "not an ONNX model (could not parse a graph from it)" in _cli_error(capsys, "compile", path, "-o", tmp_path / "out")


def test_input_shapes_that_disagree_name_the_shapes(tmp_path, capsys):
    """Two inputs sharing a symbolic length, given different lengths with --input-shape."""
    ids = helper.make_tensor_value_info("ids", TensorProto.FLOAT, [1, "seq"])
    mask = helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, "seq"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "seq"])
    graph = helper.make_graph([helper.make_node("Add", ["ids", "mask"], ["y"])], "shared_seq", [ids, mask], [y])
    path = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "shared.onnx")
    err = _cli_error(
        capsys, "compile", path, "--input-shape", "ids=1,32", "--input-shape", "mask=1,16", "-o", tmp_path / "out"
    )
    assert "imported with ids [1, 32], mask [1, 16]: dimensions the inputs share" in err
