"""Jetson presets: aarch64 host code + CUDA device code, built on this x86 machine without a GPU.

The host half is cross-compiled with the aarch64 toolchain (installed by the emulated
board's setup), the device half compiled ahead of time by nvcc into the library. On the
emulated board (qemu-user: an aarch64 CPU, no GPU, no driver) the thin loader must refuse
the artifact with its one-line "no NVIDIA driver" message, not crash.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import MODELS
from test_arm import REPO, _elf_machine, arm_board  # noqa: F401  (the board fixture)
from test_cuda import fatbin_entries

from tvmdeploy.errors import BuildError

pytestmark = [
    pytest.mark.arm,
    pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not on PATH: Jetson device code cannot be built"),
]


@pytest.fixture(scope="module")
def orin_artifact(arm_board, tmp_path_factory) -> Path:  # noqa: F811  (the board brings the cross toolchain)
    from tvmdeploy import compile_model

    out = tmp_path_factory.mktemp("jetson") / "conv-orin"
    return compile_model(MODELS / "conv_bn_relu.onnx", "jetson-orin", output_dir=out).artifact_dir


def test_jetson_orin_artifact_holds_aarch64_host_code_and_an_sm87_cubin(orin_artifact):
    manifest = json.loads((orin_artifact / "manifest.json").read_text())
    assert manifest["preset"] == "jetson-orin" and manifest["device"] == "cuda"
    assert manifest["arch"] == "aarch64" and manifest["compute_capability"] == "8.7"
    host = manifest["target"]["host"]
    assert host["mtriple"] == "aarch64-linux-gnu" and host["mcpu"] == "cortex-a78ae"
    assert manifest["target"]["arch"] == "sm_87" and manifest["versions"]["nvcc"][0].isdigit()
    assert "asimd" in manifest["cpu_flags"]
    library = orin_artifact / manifest["library"]
    assert _elf_machine(library) == 183  # EM_AARCH64
    # Device code compiled ahead of time: SASS for Orin's GPU plus PTX for newer ones.
    assert set(fatbin_entries(library.read_bytes())) == {("elf", 87), ("ptx", 87)}


def test_jetson_xavier_builds_or_names_the_toolkit_it_needs(arm_board, tmp_path):  # noqa: F811
    """sm_72 (Volta) is gone from CUDA 13's nvcc: then the build fails in one line naming the
    toolkit to use; with an older nvcc it builds an sm_72 cubin like Orin's."""
    from tvmdeploy import compile_model
    from tvmdeploy.compiler.cuda_build import nvcc_gpu_archs

    if "compute_72" in (nvcc_gpu_archs() or []):
        artifact = compile_model(MODELS / "mlp.onnx", "jetson-xavier", output_dir=tmp_path / "x").artifact_dir
        manifest = json.loads((artifact / "manifest.json").read_text())
        assert manifest["arch"] == "aarch64" and manifest["compute_capability"] == "7.2"
        assert set(fatbin_entries((artifact / "model.so").read_bytes())) == {("elf", 72), ("ptx", 72)}
    else:
        with pytest.raises(BuildError) as info:
            compile_model(MODELS / "mlp.onnx", "jetson-xavier", output_dir=tmp_path / "x")
        message = str(info.value)
        assert "sm_72" in message and "CUDA 12.x or older" in message and "\n" not in message
        assert not (tmp_path / "x").exists()


def test_emulated_aarch64_board_refuses_a_jetson_artifact_for_want_of_a_driver(arm_board, orin_artifact):  # noqa: F811
    script = orin_artifact.parent / "load_on_board.py"
    script.write_text(
        "import json, sys\n"
        "import tvmdeploy.runtime as rt\n"
        "from tvmdeploy.errors import TvmDeployError\n"
        "try:\n"
        "    rt.load(sys.argv[1])\n"
        "    print(json.dumps({'loaded': True}))\n"
        "except TvmDeployError as e:\n"
        "    print(json.dumps({'loaded': False, 'type': type(e).__name__, 'message': str(e)}))\n"
    )
    # Cortex-A76: the emulated CPU closest to Orin's A78AE (ARMv8.2 with dot product).
    argv, env = arm_board.python_command(cpu="cortex-a76", pythonpath=[str(REPO)])
    run = subprocess.run([*argv, str(script), str(orin_artifact)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["loaded"] is False and result["type"] == "DeviceUnavailableError", result
    assert "no NVIDIA driver" in result["message"] and "jetson-orin" in result["message"]
    assert "\n" not in result["message"]
