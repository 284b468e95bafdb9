"""The C++ loader (examples/cpp): built with CMake against the TVM wheels' runtime, compared
with the Python loader bit for bit, and refusing what the Python loader refuses."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import random_inputs, randomized_light_model

from tvmdeploy.compiler.signing import keygen, sign_artifact
from tvmdeploy.runtime import load

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "cpp"


@dataclass(frozen=True)
class Built:
    path: Path
    with_openssl: bool  # libcrypto found: the example checks signatures


def _missing_tools() -> list[str]:
    return [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]


@pytest.fixture(scope="module")
def cpp_loader(tmp_path_factory) -> "Built":
    missing = _missing_tools()
    if missing:
        pytest.skip(f"building the C++ example needs {' and '.join(missing)} (not on PATH)")
    build = tmp_path_factory.mktemp("cpp-build")
    configure = subprocess.run(
        ["cmake", "-S", str(EXAMPLE), "-B", str(build), f"-DPython3_EXECUTABLE={sys.executable}",
         "-DCMAKE_BUILD_TYPE=Release"],
        capture_output=True, text=True, timeout=300,
    )
    assert configure.returncode == 0, configure.stdout[-2000:] + configure.stderr[-2000:]
    compiled = subprocess.run(["cmake", "--build", str(build), "-j2"], capture_output=True, text=True, timeout=600)
    assert compiled.returncode == 0, compiled.stdout[-3000:] + compiled.stderr[-3000:]
    return Built(build / "tvmdeploy_run", with_openssl="signature checks: OpenSSL" in configure.stdout)


def run_cpp(built: Built, *argv) -> subprocess.CompletedProcess:
    return subprocess.run([str(built.path), *map(str, argv)], capture_output=True, text=True, timeout=120)


def test_cpp_loader_matches_the_python_loader_bit_for_bit(cpp_loader, digits_artifact, digits, tmp_path):
    images, _ = digits
    python_model = load(digits_artifact)
    for i, image in enumerate(images[:3]):
        np.save(tmp_path / f"in{i}.npy", image[None])
        out = tmp_path / f"out{i}"
        out.mkdir()
        run = run_cpp(cpp_loader, digits_artifact, "--input", f"image={tmp_path / f'in{i}.npy'}", "--save-outputs", out)
        assert run.returncode == 0, run.stderr
        assert "output logits: float32[1, 10]" in run.stdout
        got = np.load(out / "output_0.npy")
        want = python_model(image[None])[0]
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes()
        assert not list(out.glob("output_1.npy"))  # one output, as in the manifest


def test_cpp_loader_matches_the_python_loader_on_light_squeezenet(cpp_loader, tmp_path):
    """A real architecture (random weights, 1x3x224x224 -> 1000 logits), one run."""
    from tvmdeploy import compile_model

    path = randomized_light_model("squeezenet", tmp_path)
    artifact = compile_model(path, "host", output_dir=tmp_path / "squeezenet").artifact_dir
    feeds = random_inputs(path)
    argv = []
    for i, (name, array) in enumerate(feeds.items()):
        np.save(tmp_path / f"in{i}.npy", array)
        argv += ["--input", f"{name}={tmp_path / f'in{i}.npy'}"]
    out = tmp_path / "out"
    out.mkdir()
    run = run_cpp(cpp_loader, artifact, *argv, "--save-outputs", out)
    assert run.returncode == 0, run.stderr
    if len(os.sched_getaffinity(0)) >= 2:  # its parallel loops ran on the library's own pool
        assert "threads on tvmdeploy's pool" in run.stdout
    (want,) = load(artifact)(**feeds)
    got = np.load(out / "output_0.npy")
    assert got.shape == want.shape and got.size == 1000 and got.tobytes() == want.tobytes()


def test_cpp_loader_checks_signatures(cpp_loader, digits_artifact, tmp_path):
    folder = tmp_path / "digits"
    shutil.copytree(digits_artifact, folder)
    private, public = keygen(tmp_path / "key")
    _, other = keygen(tmp_path / "other")
    if not cpp_loader.with_openssl:
        # Built without libcrypto: trusted keys are refused, never silently ignored.
        run = run_cpp(cpp_loader, folder, "--zeros", "--trusted-key", public)
        assert run.returncode == 1 and "built without OpenSSL" in run.stderr, run.stderr
        pytest.skip("OpenSSL (libssl-dev) not found when building the example: signatures not checked by it")
    run = run_cpp(cpp_loader, folder, "--zeros", "--trusted-key", public)
    assert run.returncode == 1 and "is not signed" in run.stderr, run.stderr
    sign_artifact(folder, private)
    run = run_cpp(cpp_loader, folder, "--zeros", "--trusted-key", public)
    assert run.returncode == 0 and "signature checked" in run.stdout, run.stderr
    run = run_cpp(cpp_loader, folder, "--zeros", "--trusted-key", other)
    assert run.returncode == 1 and "not among the trusted keys" in run.stderr, run.stderr
    # A library swapped and the manifest re-hashed: hashes pass, the signature does not.
    with open(folder / "model.so", "ab") as f:
        f.write(b"tampered")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["model.so"] = hashlib.sha256((folder / "model.so").read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    run = run_cpp(cpp_loader, folder, "--zeros", "--trusted-key", public)
    assert run.returncode == 1 and "signature does not match manifest.json" in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_cpp_loader_refuses_bad_artifacts_and_inputs_in_one_line(cpp_loader, digits_artifact, tmp_path):
    folder = tmp_path / "digits"
    shutil.copytree(digits_artifact, folder)
    np.save(tmp_path / "wrong.npy", np.zeros((1, 64), np.float32))
    np.save(tmp_path / "int.npy", np.zeros((1, 1, 8, 8), np.int32))
    cases = [
        (["--input", f"image={tmp_path / 'wrong.npy'}"], "input 'image' has shape [1, 64], expected [1, 1, 8, 8]"),
        (["--input", f"image={tmp_path / 'int.npy'}"], "has dtype int32, expected float32"),
        ([], "no input for image: float32[1, 1, 8, 8]"),
    ]
    for argv, fragment in cases:
        run = run_cpp(cpp_loader, folder, *argv)
        assert run.returncode == 1 and fragment in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr

    (folder / "stowaway.so").write_bytes(b"\x7fELF")
    run = run_cpp(cpp_loader, folder, "--zeros")
    assert run.returncode == 1 and "stowaway.so is not listed in manifest.json" in run.stderr, run.stderr
    (folder / "stowaway.so").unlink()
    with open(folder / "model.so", "r+b") as f:
        f.seek(100)
        f.write(b"X")
    run = run_cpp(cpp_loader, folder, "--zeros")
    assert run.returncode == 1 and "model.so does not match the sha256" in run.stderr, run.stderr
    (folder / "model.so").unlink()
    (folder / "model.so").symlink_to(digits_artifact / "model.so")
    run = run_cpp(cpp_loader, folder, "--zeros")
    assert run.returncode == 1 and "model.so is missing or not a regular file" in run.stderr, run.stderr
