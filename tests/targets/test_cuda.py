"""CUDA presets: artifacts build without a GPU, and run (or are refused clearly) with one.

Building needs nvcc (the CUDA toolkit) but no GPU and no driver. Running needs an NVIDIA
GPU: those tests are skipped on a machine without one, with the reason, and run where
there is one.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import MODELS, ort_run, random_inputs, randomized_light_model

from tvmdeploy import compile_model
from tvmdeploy.runtime.devices import compute_capability_of_arch, cuda_status
from tvmdeploy.errors import DeviceUnavailableError, PresetError, TvmDeployError
from tvmdeploy.runtime import load, read_manifest

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not on PATH")

REPO = Path(__file__).resolve().parents[2]
PRESETS = {"cuda-sm80": 80, "cuda-sm90": 90}
MODEL_FILES = {
    "mlp": MODELS / "mlp.onnx",
    "conv_bn_relu": MODELS / "conv_bn_relu.onnx",
    "transformer_block": MODELS / "transformer_block.onnx",
    "squeezenet": None,  # light SqueezeNet with random weights, made in the fixture
}
# GPU vs ONNX Runtime CPU: float32 with nvcc's --use_fast_math (TVM's default).
RTOL, ATOL = 1e-3, 1e-3


def _cc(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


def _has_driver() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(model, preset) -> (artifact folder, model path); each built once, on first use."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc (CUDA toolkit) is not on PATH: CUDA artifacts cannot be built")
    root = tmp_path_factory.mktemp("cuda")
    cache: dict = {}

    def get(model: str, preset: str):
        if (model, preset) not in cache:
            path = MODEL_FILES[model] or randomized_light_model("squeezenet", root)
            result = compile_model(path, preset, output_dir=root / f"{model}-{preset}", cache_dir=root / "cache")
            cache[model, preset] = (result.artifact_dir, path)
        return cache[model, preset]

    return get


@pytest.fixture(scope="module")
def gpu():
    status = cuda_status()
    if not status.available:
        pytest.skip(f"no usable CUDA GPU: {status.reason}")
    return status


def fatbin_entries(data: bytes) -> list[tuple[str, int]]:
    """(kind, sm) of every entry of every CUDA fatbin embedded in `data`.

    Fatbin layout (as nvcc 12-13 write it): a 16-byte header (magic 0xBA55ED50, version,
    header size, payload size), then entries, each a header (kind 1 = PTX, 2 = ELF cubin;
    its own size; payload size; the SM number at byte 28) and the payload.
    """
    entries = []
    start = data.find(struct.pack("<I", 0xBA55ED50))
    while start >= 0:
        _, _, header, size = struct.unpack_from("<IHHQ", data, start)
        offset, end = start + header, start + header + size
        while offset < end:
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, offset)
            (sm,) = struct.unpack_from("<I", data, offset + 28)
            entries.append(({1: "ptx", 2: "elf"}.get(kind, str(kind)), sm))
            body = data[offset + entry_header : offset + entry_header + payload]
            if kind == 2:  # a cubin is an ELF file for machine EM_CUDA (190)
                assert body[:4] == b"\x7fELF" and struct.unpack_from("<H", body, 18)[0] == 190
            offset += entry_header + payload
        start = data.find(struct.pack("<I", 0xBA55ED50), end)
    return entries


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("model", MODEL_FILES)
def test_cuda_artifact_builds_without_a_gpu(built, model, preset):
    artifact, _ = built(model, preset)
    m = read_manifest(artifact)
    sm = PRESETS[preset]
    assert m.preset == preset and m.device == "cuda" and m.arch == "x86_64"
    assert m.target["kind"] == "cuda" and m.target["arch"] == f"sm_{sm}"
    assert m.target["host"]["kind"] == "llvm" and m.target["host"]["mtriple"] == "x86_64-linux-gnu"
    assert m.compute_capability == f"{sm // 10}.{sm % 10}"
    assert m.cpu_flags == []  # generic x86-64 host code
    assert m.versions["nvcc"][0].isdigit()
    # Every kernel got dlight's default GPU schedule (codegen rejects unbound ones anyway).
    assert m.extra["tuning"]["kernels_default_schedule"] >= 3
    # the schedule stage's last pass, then the build's own (run on the host code)
    assert m.passes[-2:] == ["DefaultGPUSchedules(dlight)", "RegisterTilesOnStack"]
    # Device code is compiled ahead of time, not CUDA source for the target to compile:
    # a cubin for the preset's SM, and PTX for newer GPUs to JIT.
    assert set(fatbin_entries((artifact / m.library).read_bytes())) == {("elf", sm), ("ptx", sm)}


def test_cuda_library_holds_a_cuda_module(built):
    import tvm

    artifact, _ = built("mlp", "cuda-sm80")
    library = tvm.runtime.load_module(str(artifact / "model.so"))  # the CUDA runtime is loaded by the build

    def kinds(module):
        yield module.kind
        for imported in module.imports:
            yield from kinds(imported)

    assert "cuda" in set(kinds(library))


def test_loader_refuses_without_a_gpu(built):
    if cuda_status().available:
        pytest.skip("this machine has a CUDA GPU")
    artifact, _ = built("mlp", "cuda-sm80")
    with pytest.raises(DeviceUnavailableError, match=r"mlp-cuda-sm80 \(preset cuda-sm80\) needs a CUDA GPU, but ") as e:
        load(artifact)  # the device defaults to the artifact's
    assert "\n" not in str(e.value)


@pytest.mark.skipif(_has_driver(), reason="this machine has an NVIDIA driver")
def test_runtime_only_loader_without_a_driver(built):
    """The deployment path: TVM's runtime library only, no NVIDIA driver on the machine."""
    artifact, _ = built("mlp", "cuda-sm80")
    script = (
        "import tvmdeploy.runtime as rt\n"
        "from tvmdeploy.errors import DeviceUnavailableError\n"
        "try:\n"
        f"    rt.load({str(artifact)!r})\n"
        "except DeviceUnavailableError as e:\n"
        "    print('refused:', e)\n"
        "maps = open('/proc/self/maps').read()\n"
        "print('compiler loaded:', 'libtvm_compiler' in maps)\n"
    )
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "refused: " in out.stdout and "no NVIDIA driver (libcuda.so.1 not found)" in out.stdout
    assert "compiler loaded: False" in out.stdout


@pytest.mark.skipif(_has_driver(), reason="this machine has an NVIDIA driver")
def test_runtime_only_loader_with_a_driver_but_no_gpu(built, tmp_path):
    """The deployment path on a GPU machine, as far as this one goes: with a driver (the
    stub the build uses) the loader brings up TVM's CUDA runtime without the compiler, the
    artifact's compiled CUDA module deserializes, and the refusal names the missing GPU."""
    artifact, _ = built("mlp", "cuda-sm80")
    script = (
        "import ctypes, os, pathlib\n"
        "from tvmdeploy.compiler.cuda_stub import build_stub_driver\n"
        f"ctypes.CDLL(str(build_stub_driver(pathlib.Path({str(tmp_path)!r}))), mode=os.RTLD_GLOBAL)\n"
        "import tvm, tvmdeploy.runtime as rt\n"
        "from tvmdeploy.errors import DeviceUnavailableError\n"
        "try:\n"
        f"    rt.load({str(artifact)!r})\n"
        "except DeviceUnavailableError as e:\n"
        "    print('refused:', e)\n"
        f"lib = tvm.runtime.load_module({str(artifact / 'model.so')!r})\n"
        "print('kinds:', sorted(j.kind for i in lib.imports for j in i.imports))\n"
        "print('compiler loaded:', 'libtvm_compiler' in open('/proc/self/maps').read())\n"
    )
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "refused: " in out.stdout and "but the NVIDIA driver reports no GPU" in out.stdout
    assert "kinds: ['cuda']" in out.stdout and "compiler loaded: False" in out.stdout


def test_cli_run_refuses_with_one_line(built):
    if cuda_status().available:
        pytest.skip("this machine has a CUDA GPU")
    artifact, _ = built("mlp", "cuda-sm80")
    out = subprocess.run(
        [sys.executable, "-m", "tvmdeploy.cli", "run", str(artifact), "--random-inputs"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tvmdeploy: error: ") and "needs a CUDA GPU, but" in lines[0]
    assert "Traceback" not in out.stderr


def test_cli_inspect_works_without_a_gpu(built):
    artifact, _ = built("mlp", "cuda-sm80")
    out = subprocess.run(
        [sys.executable, "-m", "tvmdeploy.cli", "inspect", str(artifact)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "kind=cuda, arch=sm_80" in out.stdout and "gpu:     compute capability 8.0 or newer" in out.stdout


def test_tuning_needs_a_gpu():
    if cuda_status().available:
        pytest.skip("this machine has a CUDA GPU")
    from tvmdeploy.compiler import tune_model

    with pytest.raises(TvmDeployError, match=r"^no CUDA GPU: tuning for sm_80 measures kernels on one"):
        tune_model(MODELS / "mlp.onnx", "cuda-sm80")


def test_cuda_preset_needs_an_arch(tmp_path):
    from tvmdeploy.compiler.presets import load_preset

    path = tmp_path / "gpu.toml"
    path.write_text('[target]\nkind = "cuda"\n\n[host]\nkind = "llvm"\nmtriple = "x86_64-linux-gnu"\n')
    with pytest.raises(PresetError, match=r"a cuda target needs an 'arch' such as \"sm_80\""):
        load_preset(str(path))


def test_compute_capability_of_arch():
    assert [compute_capability_of_arch(a) for a in ("sm_80", "sm_86", "sm_90a", "sm_120")] == ["8.0", "8.6", "9.0", "12.0"]


# --- on a GPU --------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODEL_FILES)
def test_cuda_artifact_matches_onnxruntime(built, gpu, model):
    preset = "cuda-sm90" if _cc(gpu.compute_capability) >= (9, 0) else "cuda-sm80"
    artifact, path = built(model, preset)
    feeds = random_inputs(path, seed=3)
    loaded = load(artifact)
    outputs = loaded(**feeds)
    for got, expected in zip(outputs, ort_run(path, feeds)):
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    assert len(loaded.time(list(feeds.values()), warmup=1, repeat=3)) == 3


def test_cuda_artifact_refused_on_an_older_gpu(built, gpu):
    if _cc(gpu.compute_capability) >= (9, 0):
        pytest.skip(f"this GPU ({gpu.name}, {gpu.compute_capability}) runs sm_90 code")
    artifact, _ = built("mlp", "cuda-sm90")
    with pytest.raises(DeviceUnavailableError, match=r"needs a GPU of compute capability 9.0 or newer"):
        load(artifact)


@needs_nvcc
def test_input_names_that_are_not_identifiers(tmp_path):
    """The ONNX model zoo's ResNet-50 takes "gpu_0/data_0": printed as is, nvcc rejected it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["gpu_0/data_0", "w"], ["y"]), helper.make_node("Relu", ["y"], ["out/1"])],
        "g",
        [helper.make_tensor_value_info("gpu_0/data_0", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("out/1", TensorProto.FLOAT, [1, 4])],
        [w],
    )
    path = tmp_path / "slashes.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    m = compile_model(path, "cuda-sm80", output_dir=tmp_path / "a", cache_dir=tmp_path / "c").manifest
    assert [s.name for s in m.inputs] == ["gpu_0/data_0"] and [s.name for s in m.outputs] == ["out/1"]
    assert "IdentifierParamNames" in m.passes


@needs_nvcc
def test_tuning_records_apply_to_cuda_builds(tmp_path):
    """Everything of tuning but the measuring, which needs a GPU: MetaSchedule's CUDA design
    spaces (tensor-core rules included) for every kernel, valid after its postprocessors
    (a CUDA target without max_threads_per_block fails here); then records as a GPU
    tuning run writes them (these schedules, made-up times) scheduling the build. The
    tuner's builder compiles the candidates too; only the runner needs the GPU."""
    from tvmdeploy.compiler import _tvm
    from tvmdeploy.compiler.kernels import register_intrinsics
    from tvmdeploy.compiler.frontend import import_model
    from tvmdeploy.compiler.optimize import optimize_graph
    from tvmdeploy.compiler.presets import load_preset, resolve_preset
    from tvmdeploy.compiler.tuning.cache import TargetCache
    from tvmdeploy.compiler.lowering import lower_for_tuning
    from tvmdeploy.compiler.tuning.database import load_database as _load_database
    from tvmdeploy.compiler.tuning.tuner import _builder_initializer

    ms = _tvm.ms
    _, target = resolve_preset(load_preset("cuda-sm80"))
    fused = lower_for_tuning(optimize_graph(import_model(MODELS / "mlp.onnx").mod)[0])
    register_intrinsics("cuda")  # as the tuner does (~25 s, once per process)
    tasks = ms.relax_integration.extract_tasks(fused, target)
    assert len(tasks) == 3
    database = _load_database(TargetCache.open(_tvm.target_to_dict(target), _tvm.TVM_VERSION, tmp_path).folder)
    candidates = []
    for task in tasks:
        context = ms.TuneContext(
            mod=task.dispatched[0], target=target, space_generator="post-order-apply",
            search_strategy="replay-trace", num_threads=2, rand_state=1,
        )
        spaces = context.generate_design_space()
        assert spaces and all(p.apply(spaces[0]) for p in context.space_generator.postprocs), task.task_name
        candidates.append(ms.builder.BuilderInput(spaces[0].mod, target))
        workload = database.commit_workload(task.dispatched[0])
        database.commit_tuning_record(ms.database.TuningRecord(spaces[0].trace, workload, run_secs=[1e-4], target=target))
    # The tuner's builder (a fresh worker process: stub driver, nvcc) compiles the candidates.
    builder = ms.builder.LocalBuilder(
        f_build=_tvm.metaschedule_build, initializer=_builder_initializer(target), max_workers=1, timeout_sec=120
    )
    for result in builder.build(candidates):
        assert result.error_msg is None and Path(result.artifact_path).is_file(), result.error_msg
    m = compile_model(MODELS / "mlp.onnx", "cuda-sm80", output_dir=tmp_path / "a", cache_dir=tmp_path).manifest
    assert m.extra["tuning"]["kernels_scheduled_from_cache"] == 3 and m.extra["tuning"]["kernels_default_schedule"] == 0
    assert "MetaScheduleApplyDatabase" in m.passes
    assert set(fatbin_entries((tmp_path / "a" / m.library).read_bytes())) == {("elf", 80), ("ptx", 80)}


@needs_nvcc
def test_fp16_artifact_builds_and_tracks_fp32(tmp_path, request):
    """--quantize fp16: float16 tensors and weights, float32 accumulation. The SQNR in the
    manifest is measured on this machine's CPU (same arithmetic); the GPU run against
    ONNX Runtime needs a GPU."""
    from tvmdeploy.compiler.quantization import Fp16

    path = MODELS / "transformer_block.onnx"
    result = compile_model(path, "cuda-sm80", output_dir=tmp_path / "fp16", quantize=Fp16(), cache_dir=tmp_path / "c")
    report = result.manifest.extra["quantization"]
    assert report["scheme"] == "fp16" and "ToMixedPrecision" in result.manifest.passes
    assert report["after"]["weight_bytes"] <= 0.55 * report["before"]["weight_bytes"]
    assert report["accuracy"]["output_sqnr_db"][0] >= 40
    assert fatbin_entries((result.artifact_dir / "model.so").read_bytes())
    status = cuda_status()
    if not status.available:
        pytest.skip(f"fp16 artifact built and checked; running it needs a CUDA GPU: {status.reason}")
    feeds = random_inputs(path, seed=3)
    got = load(result.artifact_dir)(**feeds)[0]
    expected = ort_run(path, feeds)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-2, atol=1e-2)
