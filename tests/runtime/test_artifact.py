"""The artifact folder, its manifest, and the thin loader's checks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import LIGHT

from tvmdeploy import compile_model
from tvmdeploy.errors import ArtifactError, BuildError, InputMismatchError
from tvmdeploy.runtime.manifest import MANIFEST_NAME, sha256_file
from tvmdeploy.runtime import load, read_manifest
from tvmdeploy.runtime.loader import cpu_flags


def test_manifest_describes_the_build(digits_artifact, digits_model):
    m = read_manifest(digits_artifact)
    assert m.schema_version == 1
    assert m.model_name == "digits_cnn"
    assert m.source_sha256 == sha256_file(digits_model)
    assert [(s.name, s.shape, s.dtype) for s in m.inputs] == [("image", (1, 1, 8, 8), "float32")]
    assert [(s.name, s.shape, s.dtype) for s in m.outputs] == [("logits", (1, 10), "float32")]
    assert m.preset == "host" and m.target["kind"] == "llvm" and m.target["mtriple"].startswith(m.arch)
    assert {"tvm", "tvm-ffi", "tvmdeploy", "onnx"} <= set(m.versions)
    assert m.versions["tvm-ffi"] == "0.1.14.post1"
    assert "FoldBatchnormToConv2D" in m.passes and "FuseOps" in m.passes
    assert m.weights == "embedded" and m.build_seconds > 0
    files = sorted(p.name for p in Path(digits_artifact).iterdir())
    assert files == sorted([MANIFEST_NAME, *m.files])
    for name, digest in m.files.items():
        assert sha256_file(Path(digits_artifact) / name) == digest


def test_call_by_name_and_position_agree(digits_artifact, digits):
    images, _ = digits
    model = load(digits_artifact)
    (by_position,) = model(images[:1])
    (by_name,) = model(image=images[:1])
    np.testing.assert_array_equal(by_position, by_name)
    assert [s.name for s in model.inputs] == ["image"] and [s.name for s in model.outputs] == ["logits"]


def test_a_zero_size_input_runs_on_every_call(tmp_path):
    """An input with a zero-length axis (x [3, 0] @ W [0, 5] = zeros): numpy gives such a
    view non-compact strides, which the library rejected whenever DLPack happened to take
    the staged buffer (its data pointer aligned by chance). It must run every time."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from tvmdeploy import compile_model

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])], "empty_k",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 0])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])],
        [numpy_helper.from_array(np.zeros((0, 5), np.float32), "w"),
         numpy_helper.from_array(np.arange(5, dtype=np.float32), "b")],
    )
    path = tmp_path / "empty_k.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    artifact = compile_model(path, "host", output_dir=tmp_path / "a", cache_dir=tmp_path / "c").artifact_dir
    (got,) = load(artifact)(x=np.zeros((3, 0), np.float32))
    np.testing.assert_array_equal(got, np.broadcast_to(np.arange(5, dtype=np.float32), (3, 5)))
    # Whether DLPack took the buffer depended on where the allocator put it: about one
    # fresh process in three failed, so run it in ten.
    import subprocess
    import sys

    for _ in range(10):
        run = subprocess.run([sys.executable, "-m", "tvmdeploy", "run", str(artifact), "--random-inputs"],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr


def test_reused_input_buffers_give_each_call_its_own_result(digits_artifact, digits, digits_model):
    """Inputs go through per-thread buffers reused across calls (runtime/host_buffers.py):
    results must not alias them, nor each other, nor another thread's inputs."""
    from concurrent.futures import ThreadPoolExecutor

    from conftest import ort_run

    images, _ = digits
    model = load(digits_artifact)
    want = [ort_run(digits_model, {"image": images[i:i + 1]})[0] for i in range(8)]
    first = model(image=images[:1])[0]
    kept = first.copy()
    second = model(image=images[1:2])[0]
    np.testing.assert_array_equal(first, kept)  # the second call did not write into the first result
    np.testing.assert_allclose(first, want[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(second, want[1], rtol=1e-4, atol=1e-4)
    source = images[2:3].copy()
    model(image=source)
    source[:] = 0  # changing the caller's array afterwards changes nothing
    np.testing.assert_allclose(model(image=images[2:3])[0], want[2], rtol=1e-4, atol=1e-4)
    with ThreadPoolExecutor(4) as pool:
        for _ in range(5):
            results = list(pool.map(lambda i: model(image=images[i:i + 1])[0], range(8)))
            for got, expected in zip(results, want):
                np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_wrong_input_shape_dtype_and_name(digits_artifact, digits):
    images, _ = digits
    model = load(digits_artifact)
    with pytest.raises(InputMismatchError, match=r"input 'image' has shape \[2, 1, 8, 8\], expected \[1, 1, 8, 8\]"):
        model(images[:2])
    with pytest.raises(InputMismatchError, match=r"input 'image' has dtype float64, expected float32"):
        model(images[:1].astype(np.float64))
    with pytest.raises(InputMismatchError, match=r"unknown 'img'; missing 'image'"):
        model(img=images[:1])
    with pytest.raises(InputMismatchError, match=r"expected 1 input\(s\) \(image: float32\[1, 1, 8, 8\]\), got 2"):
        model(images[:1], images[:1])


def _copy(artifact, tmp_path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    return copy


def test_tampered_library_is_refused_before_loading(digits_artifact, tmp_path):
    copy = _copy(digits_artifact, tmp_path)
    library = copy / read_manifest(copy).library
    data = bytearray(library.read_bytes())
    data[len(data) // 2] ^= 0xFF
    library.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model.so does not match the sha256 in manifest.json"):
        load(copy)


def test_missing_library_and_missing_manifest(digits_artifact, tmp_path):
    copy = _copy(digits_artifact, tmp_path)
    (copy / "model.so").unlink()
    with pytest.raises(ArtifactError, match=r"model.so is missing"):
        load(copy)
    (copy / MANIFEST_NAME).unlink()
    with pytest.raises(ArtifactError, match=r"not a tvmdeploy artifact \(no manifest.json\)"):
        load(copy)
    with pytest.raises(ArtifactError, match=r"no such artifact folder"):
        load(tmp_path / "nowhere")


def test_artifact_for_another_architecture_is_refused(tmp_path, digits_model):
    """A real aarch64 build (object files in a tar: no cross linker needed) on this x86 host."""
    preset = tmp_path / "arm-tar.toml"
    preset.write_text(
        'description = "aarch64 objects"\n[target]\nkind = "llvm"\nmtriple = "aarch64-linux-gnu"\n'
        'mcpu = "cortex-a72"\nnum-cores = 4\n[build]\nexport_format = "tar"\n'
    )
    result = compile_model(digits_model, str(preset), output_dir=tmp_path / "arm")
    assert result.manifest.arch == "aarch64" and result.manifest.library == "model.tar"
    assert "asimd" in result.manifest.cpu_flags
    if os.uname().machine == "aarch64":
        pytest.skip("this machine is aarch64")
    with pytest.raises(ArtifactError, match=r"built for aarch64 \(preset arm-tar\), but this machine is x86_64"):
        load(result.artifact_dir)


def test_artifact_needing_missing_cpu_features_is_refused(tmp_path, digits_model):
    """Built for a CPU with AMX: loading it here would die with SIGILL, so it is refused."""
    flags = cpu_flags()
    if flags is None or "amx_int8" in flags or os.uname().machine != "x86_64":
        pytest.skip("needs an x86-64 CPU without AMX and a readable /proc/cpuinfo")
    preset = tmp_path / "spr.toml"
    preset.write_text('[target]\nkind = "llvm"\nmtriple = "x86_64-linux-gnu"\nmcpu = "sapphirerapids"\nnum-cores = 2\n')
    result = compile_model(digits_model, str(preset), output_dir=tmp_path / "spr")
    with pytest.raises(ArtifactError, match=r"built for a CPU with .*amx_int8.*which this CPU lacks"):
        load(result.artifact_dir)


def test_cuda_device_absent_is_refused(digits_artifact):
    with pytest.raises(ArtifactError, match=r"built for device 'cpu'.*cannot run on 'cuda'"):
        load(digits_artifact, device="cuda")


def test_failed_build_keeps_the_existing_artifact(tmp_path, digits_model):
    """A link step that fails (the preset's 'compiler' is /bin/false) mid-build."""
    out = tmp_path / "art"
    first = compile_model(digits_model, "host", output_dir=out)
    before = {p.name: sha256_file(p) for p in out.iterdir()}
    preset = tmp_path / "broken.toml"
    preset.write_text(
        '[target]\nkind = "llvm"\nmtriple = "x86_64-linux-gnu"\nmcpu = "haswell"\nnum-cores = 2\n'
        '[build]\ncross_compiler = "false"\n'
    )
    with pytest.raises(BuildError, match=r"exporting the library for broken failed"):
        compile_model(digits_model, str(preset), output_dir=out)
    assert {p.name: sha256_file(p) for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "broken.toml"]
    load(first.artifact_dir)


def test_recompile_replaces_the_artifact(tmp_path, digits_model):
    out = tmp_path / "art"
    compile_model(digits_model, "host", output_dir=out)
    compile_model(digits_model, "x86_64-avx2", output_dir=out)
    assert read_manifest(out).preset == "x86_64-avx2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_refuses_to_overwrite_a_non_artifact_folder(tmp_path, digits_model):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match=r"precious exists and is not a tvmdeploy artifact"):
        compile_model(digits_model, "host", output_dir=out)
    assert (out / "notes.txt").read_text() == "keep me"


def test_interrupted_compile_leaves_nothing(tmp_path):
    """SIGTERM while ResNet-50 is being compiled: no artifact, no staging folder left."""
    out = tmp_path / "r50"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tvmdeploy.cli", "compile", str(LIGHT / "light_resnet50.onnx"), "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Wait until the staging folder exists (the build has started), then interrupt.
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".r50.partial-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert list(tmp_path.iterdir()) == []


def test_killed_compile_staging_is_swept_by_the_next(tmp_path, digits_model):
    stale = tmp_path / ".art.partial-999999999-abc"  # no such pid
    stale.mkdir()
    (stale / "model.so").write_bytes(b"half")
    compile_model(digits_model, "host", output_dir=tmp_path / "art")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


RUNTIME_ONLY_SCRIPT = r"""
import json, sys
import numpy as np
from tvmdeploy.runtime import load
model = load(sys.argv[1])
x = np.load(sys.argv[2])
(out,) = model(x)
maps = open("/proc/self/maps").read()
print(json.dumps({
    "compiler_mapped": "libtvm_compiler" in maps,
    "runtime_mapped": "libtvm_runtime" in maps,
    "compiler_modules": sorted(m for m in sys.modules if m.startswith(("tvmdeploy.compiler", "tvm.relax"))),
    "out": out.tolist(),
}))
"""


def test_runs_in_a_fresh_runtime_only_process(digits_artifact, digits, tmp_path):
    images, _ = digits
    np.save(tmp_path / "x.npy", images[:1])
    env = {k: v for k, v in os.environ.items() if k != "TVM_USE_RUNTIME_LIB"}  # thin by default
    proc = subprocess.run(
        [sys.executable, "-c", RUNTIME_ONLY_SCRIPT, str(digits_artifact), str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["runtime_mapped"] and not report["compiler_mapped"]
    assert report["compiler_modules"] == []
    (expected,) = load(digits_artifact)(images[:1])
    np.testing.assert_allclose(np.array(report["out"], dtype=np.float32), expected, rtol=1e-6, atol=1e-6)
