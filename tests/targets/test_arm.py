"""ARM boards without a board: cross-compiled aarch64 artifacts run on an emulated Cortex-A72.

The board (qemu-user + an arm64 Debian Python + TVM's runtime-only aarch64 wheel) is set
up once per test run through the public API, apt-get included when root; the tests then
run artifacts under it directly (the thin loader, unchanged), over RPC (a server, and a
tracker), and tune a model through MetaSchedule's RPC runner. Numbers are compared with
ONNX Runtime on this x86 host.
"""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import MODELS, ort_run, random_inputs, randomized_light_model

from tvmdeploy import board
from tvmdeploy.cli.main import main
from tvmdeploy.errors import BoardError
from tvmdeploy.runtime.thread_pool import usable_cpus

REPO = Path(__file__).resolve().parents[2]
PRESET = "aarch64-cortex-a72"
ATOL = 1e-4

pytestmark = [
    pytest.mark.arm,
    pytest.mark.skipif(
        platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"),
        reason="the emulated aarch64 board runs on x86_64 Linux hosts",
    ),
]


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="session")
def arm_board() -> board.Board:
    # Under the session's hermetic cache root (conftest), so once per test run; no skip
    # when tools are missing: setup installs them (root) or fails saying which.
    return board.setup(log=lambda line: print(f"[board] {line}"))


@pytest.fixture(scope="session")
def arm_models(session_dir) -> dict[str, Path]:
    models = {"mlp": MODELS / "mlp.onnx", "conv_bn_relu": MODELS / "conv_bn_relu.onnx"}
    models["squeezenet"] = randomized_light_model("squeezenet", session_dir)
    return models


@pytest.fixture(scope="session")
def arm_artifacts(arm_board, arm_models, session_dir) -> dict[str, Path]:
    from tvmdeploy import compile_model

    return {
        name: compile_model(path, PRESET, output_dir=session_dir / f"{name}-{PRESET}").artifact_dir
        for name, path in arm_models.items()
    }


@pytest.fixture(scope="module")
def emulated_outputs(arm_board, arm_artifacts, arm_models, tmp_path_factory):
    """Every artifact run once by tvmdeploy.runtime inside one emulated aarch64 process."""
    work = tmp_path_factory.mktemp("qemu-run")
    jobs = []
    for name, artifact in arm_artifacts.items():
        np.savez(work / f"{name}-in.npz", **random_inputs(arm_models[name]))
        jobs.append([str(artifact), str(work / f"{name}-in.npz"), str(work / f"{name}-out.npz")])
    script = work / "run_on_board.py"
    script.write_text(
        "import json, platform, sys\n"
        "import numpy as np\n"
        "import tvmdeploy.runtime as rt\n"
        "pools = {}\n"
        "for artifact, inputs, outputs in json.loads(sys.argv[1]):\n"
        "    model = rt.load(artifact)\n"
        "    result = model(**dict(np.load(inputs)))\n"
        "    np.savez(outputs, *result)\n"
        "    pools[artifact] = model._pool.stats()['parallel_launches'] if model._pool else None\n"
        "maps = open('/proc/self/maps').read()\n"
        "print(json.dumps({'machine': platform.machine(), 'runtime_lib': 'libtvm_runtime' in maps,\n"
        "                  'compiler_lib': 'libtvm_compiler' in maps, 'pools': pools}))\n"
    )
    argv, env = arm_board.python_command(cpu="cortex-a72", pythonpath=[str(REPO)])
    result = subprocess.run(
        [*argv, str(script), json.dumps(jobs)], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    outputs = {}
    for name in arm_artifacts:
        with np.load(work / f"{name}-out.npz") as data:
            outputs[name] = [data[f"arr_{i}"] for i in range(len(data.files))]
    return facts, outputs


def _elf_machine(path: Path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    return int.from_bytes(header[18:20], "little")


def test_board_setup_is_cached_and_reports_its_costs(arm_board):
    facts = arm_board.facts()
    assert facts["tvm"] and facts["timings"]["total_s"] > 0
    # Runtime only: the compiler library was dropped from the aarch64 wheel.
    assert (arm_board.site / "tvm" / "lib" / "libtvm_runtime.so").exists()
    assert not list((arm_board.site / "tvm" / "lib").glob("libtvm_compiler*"))
    assert board.setup() == arm_board  # second call: nothing to do


@pytest.mark.parametrize("name", ["mlp", "conv_bn_relu", "squeezenet"])
def test_cross_compiled_artifact_matches_onnxruntime_under_qemu(name, arm_artifacts, arm_models, emulated_outputs):
    facts, outputs = emulated_outputs
    facts = dict(facts)
    pools = facts.pop("pools")
    assert facts == {"machine": "aarch64", "runtime_lib": True, "compiler_lib": False}
    artifact = arm_artifacts[name]
    if name == "squeezenet" and usable_cpus() >= 2:
        assert pools[str(artifact)] >= 1  # its parallel loops ran on tvmdeploy's pool, built for aarch64
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["arch"] == "aarch64" and "asimd" in manifest["cpu_flags"]
    assert _elf_machine(artifact / "model.so") == 183  # EM_AARCH64
    expected = ort_run(arm_models[name], random_inputs(arm_models[name]))
    assert len(outputs[name]) == len(expected)
    for got, want in zip(outputs[name], expected):
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=1e-4)


@pytest.fixture(scope="module")
def running_board(arm_board):
    """Starts the board's RPC server as a test needs it: plain (for --rpc) or behind a local
    tracker (a tracker-registered server only accepts sessions the tracker hands out)."""

    class Running:
        mode = None
        services: dict = {}

        def ensure(self, mode: str) -> dict:
            if self.mode != mode:
                board.stop()
                self.services = board.start(PRESET, port=9290, local_tracker=(mode == "tracker"))
                self.mode = mode
            return self.services

    running = Running()
    yield running
    board.stop()


def test_remote_run_through_rpc_server(running_board, arm_artifacts, arm_models, capsys):
    from tvmdeploy.runtime.remote import load_remote

    server = running_board.ensure("rpc")["server"]
    inputs = random_inputs(arm_models["conv_bn_relu"], seed=1)
    # The session ends with the block: the server serves one client at a time.
    with load_remote(arm_artifacts["conv_bn_relu"], rpc=server.address) as model:
        outputs = model(**inputs)
        seconds = model.time(model.random_inputs(), warmup=1, repeat=3)
    for got, want in zip(outputs, ort_run(arm_models["conv_bn_relu"], inputs)):
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=1e-4)
    assert len(seconds) == 3 and all(0 < s < 10 for s in seconds)

    code, out, err = cli(capsys, "run", arm_artifacts["mlp"], "--rpc", server.address, "--random-inputs", "--repeat", "3")
    assert code == 0, err
    assert "output logits: float32[1, 10]" in out and "latency: median" in out


def test_remote_errors_are_one_line(running_board, arm_artifacts, capsys):
    running_board.ensure("rpc")
    for address, fragment in [("nonsense", "must look like HOST:PORT"), ("127.0.0.1:1", "cannot connect")]:
        code, _, err = cli(capsys, "run", arm_artifacts["mlp"], "--rpc", address, "--random-inputs")
        assert code == 1 and len(err.strip().splitlines()) == 1 and fragment in err, err
        assert "Traceback" not in err
    code, _, err = cli(capsys, "run", arm_artifacts["mlp"], "--tracker", "127.0.0.1:1", "--random-inputs")
    assert code == 1 and "--key" in err and len(err.strip().splitlines()) == 1, err


def test_remote_run_and_bench_through_tracker(running_board, arm_artifacts, arm_models, capsys):
    from tvmdeploy.runtime.remote import load_remote

    server = running_board.ensure("tracker")["server"]
    assert server.key == PRESET and server.tracker
    inputs = random_inputs(arm_models["mlp"], seed=2)
    with load_remote(arm_artifacts["mlp"], tracker=server.tracker, key=server.key) as model:
        outputs = model(**inputs)
    for got, want in zip(outputs, ort_run(arm_models["mlp"], inputs)):
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=1e-4)

    code, out, err = cli(
        capsys, "bench", arm_artifacts["mlp"], "--tracker", server.tracker, "--key", server.key, "--repeat", "5"
    )
    assert code == 0, err
    assert "timed on the device" in out and "median" in out and "onnxruntime" not in out


def test_remote_tuning_records_land_in_the_target_cache_and_are_reused(running_board, arm_models, tmp_path, capsys):
    from tvmdeploy.compiler import compile_model, tune_model
    from tvmdeploy.runtime.remote import load_remote
    from tvmdeploy.compiler.tuning.tuner import TuningBudget

    server = running_board.ensure("tracker")["server"]
    cache_dir = tmp_path / "cache"
    report = tune_model(
        arm_models["mlp"], PRESET, TuningBudget(trials=3), cache_dir=cache_dir, tracker=server.tracker, key=server.key
    )
    assert report.trials == 3
    measured = [t for t in report.tasks if t.best_ms is not None]
    assert measured and all(0 < t.best_ms < 1000 for t in measured), report.table()
    assert Path(report.cache_folder).is_relative_to(cache_dir)

    result = compile_model(arm_models["mlp"], PRESET, output_dir=tmp_path / "mlp-tuned", cache_dir=cache_dir)
    assert result.manifest.extra["tuning"]["kernels_scheduled_from_cache"] >= len(measured)
    inputs = random_inputs(arm_models["mlp"], seed=3)
    with load_remote(result.artifact_dir, tracker=server.tracker, key=server.key) as model:
        outputs = model(**inputs)
    for got, want in zip(outputs, ort_run(arm_models["mlp"], inputs)):
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=1e-4)


def test_tune_through_a_tracker_without_the_key_fails_in_one_line(running_board, capsys):
    server = running_board.ensure("tracker")["server"]
    code, _, err = cli(capsys, "tune", MODELS / "mlp.onnx", "--target", PRESET, "--trials", "2",
                       "--tracker", server.tracker, "--key", "no-such-board")
    assert code == 1 and "no device with key 'no-such-board'" in err and len(err.strip().splitlines()) == 1, err


def test_board_start_before_setup_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TVMDEPLOY_BOARD_DIR", str(tmp_path / "no-board"))
    with pytest.raises(BoardError, match="not set up"):
        board.start(PRESET)
    code, _, err = cli(capsys, "board", "start")
    assert code == 1 and "tvmdeploy board setup" in err and len(err.strip().splitlines()) == 1, err
    code, out, _ = cli(capsys, "board", "status")
    assert code == 0 and "not set up" in out and "not running" in out


def test_board_refuses_a_non_aarch64_preset(arm_board):
    with pytest.raises(BoardError, match="aarch64"):
        board.qemu_cpu("x86_64-avx2")



def test_emulated_cpu_enforces_the_presets_instruction_set(arm_board, tmp_path):
    """Code for a CPU feature the board lacks (SVE on a Cortex-A72) dies with SIGILL under
    the board's -cpu, as on a real Pi 4, and runs on an emulated CPU that has it."""
    from tvmdeploy import compile_model

    preset = tmp_path / "aarch64-a72-sve.toml"
    preset.write_text(
        (REPO / "targets" / f"{PRESET}.toml").read_text().replace('mattr = ["+neon"]', 'mattr = ["+neon", "+sve"]')
    )
    artifact = compile_model(MODELS / "conv_bn_relu.onnx", str(preset), output_dir=tmp_path / "sve").artifact_dir
    script = tmp_path / "run.py"
    script.write_text(
        "import sys, tvmdeploy.runtime as rt\n"
        "m = rt.load(sys.argv[1])\n"
        "print(m(*m.random_inputs())[0].shape)\n"
    )
    results = {}
    for cpu in ("cortex-a72", "max"):
        argv, env = arm_board.python_command(cpu=cpu, pythonpath=[str(REPO)])
        results[cpu] = subprocess.run([*argv, str(script), str(artifact)], capture_output=True, text=True, env=env, timeout=300)
    assert results["cortex-a72"].returncode != 0 and "Illegal instruction" in results["cortex-a72"].stderr
    assert results["max"].returncode == 0, results["max"].stderr[-2000:]
    assert "(1, 10)" in results["max"].stdout


def test_tuning_a_cross_preset_without_a_device_says_how(capsys):
    code, _, err = cli(capsys, "tune", MODELS / "mlp.onnx", "--target", PRESET, "--trials", "2")
    assert code == 1 and "--tracker HOST:PORT --key KEY" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = cli(capsys, "tune", MODELS / "mlp.onnx", "--target", PRESET, "--key", PRESET)
    assert code == 1 and "--key needs --tracker" in err, err


def test_int8_runs_sdot_kernels_on_an_emulated_cortex_a76(arm_board, tmp_path):
    """int8 for a dot-product ARM preset: packed s8 x s8 kernels tensorized with sdot,
    run under qemu's Cortex-A76, against the same int8 model built for this x86 host."""
    from tvmdeploy import compile_model, load
    from tvmdeploy.compiler.calibration import sqnr_db
    from tvmdeploy.data import DIGITS_CALIBRATION, DIGITS_CNN, DIGITS_TEST
    from tvmdeploy.compiler.quantization import Int8Static

    arm = compile_model(
        DIGITS_CNN, "aarch64-cortex-a76", output_dir=tmp_path / "arm", quantize=Int8Static(),
        calibration_data=DIGITS_CALIBRATION,
    )
    kernels = arm.manifest.extra["quantization"]["kernels"]
    assert kernels["intrinsic"] == "dot_4x4_i8i8s32_sdot"
    assert kernels["packed_layers"] == ["conv2d_0", "conv2d_1", "conv2d_2", "matmul_0"]
    library = next(p for p in arm.artifact_dir.iterdir() if p.suffix == ".so")
    asm = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(library)], capture_output=True, text=True, check=True)
    assert "sdot" in asm.stdout

    images = np.load(DIGITS_TEST)["image"][:100]
    np.savez(tmp_path / "in.npz", image=images)
    script = tmp_path / "run_digits.py"
    script.write_text(
        "import sys\nimport numpy as np\nimport tvmdeploy.runtime as rt\n"
        "model = rt.load(sys.argv[1])\n"
        "images = np.load(sys.argv[2])['image']\n"
        "np.save(sys.argv[3], np.concatenate([model(x[None])[0] for x in images]))\n"
    )
    argv, env = arm_board.python_command(cpu="cortex-a76", pythonpath=[str(REPO)])
    run = subprocess.run(
        [*argv, str(script), str(arm.artifact_dir), str(tmp_path / "in.npz"), str(tmp_path / "out.npy")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    on_board = np.load(tmp_path / "out.npy")
    host = load(compile_model(
        DIGITS_CNN, "host", output_dir=tmp_path / "host", quantize=Int8Static(), calibration_data=DIGITS_CALIBRATION,
    ).artifact_dir)
    here = np.concatenate([host(x[None])[0] for x in images])
    # The same integers; float epilogues may round differently (FMA contraction on ARM).
    assert sqnr_db(here, on_board) >= 30
    assert np.mean(here.argmax(axis=1) == on_board.argmax(axis=1)) >= 0.98


def test_cpp_loader_cross_compiled_matches_the_python_loader_under_qemu(arm_board, arm_artifacts, arm_models, emulated_outputs, tmp_path):
    """examples/cpp cross-compiled against the board's aarch64 TVM wheels, run under qemu on
    the artifacts the emulated Python loader ran above: the same bits out."""
    import shutil

    from tvmdeploy.board.provision import ensure_host_packages

    if shutil.which("cmake") is None:
        pytest.skip("building the C++ example needs cmake (not on PATH)")
    ensure_host_packages()  # g++-aarch64-linux-gnu, for a board set up before it was on the list
    example = REPO / "examples" / "cpp"
    build = tmp_path / "build"
    configure = subprocess.run(
        ["cmake", "-S", str(example), "-B", str(build), f"-DCMAKE_TOOLCHAIN_FILE={example / 'aarch64-linux-gnu.cmake'}",
         f"-DTVM_ROOT={arm_board.site / 'tvm'}", f"-DTVM_FFI_ROOT={arm_board.site / 'tvm_ffi'}",
         "-DTVMDEPLOY_WITH_OPENSSL=OFF", "-DCMAKE_BUILD_TYPE=Release"],
        capture_output=True, text=True, timeout=300,
    )
    assert configure.returncode == 0, configure.stdout[-2000:] + configure.stderr[-2000:]
    compiled = subprocess.run(["cmake", "--build", str(build), "-j2"], capture_output=True, text=True, timeout=600)
    assert compiled.returncode == 0, compiled.stdout[-3000:] + compiled.stderr[-3000:]
    binary = build / "tvmdeploy_run"
    assert _elf_machine(binary) == 183
    needed = subprocess.run(["aarch64-linux-gnu-readelf", "-d", str(binary)], capture_output=True, text=True).stdout
    assert "libtvm_runtime.so" in needed and "libtvm_ffi.so" in needed and "python" not in needed

    _, python_outputs = emulated_outputs
    for name, artifact in arm_artifacts.items():
        argv = []
        for input_name, array in random_inputs(arm_models[name]).items():
            np.save(tmp_path / f"{name}-{len(argv)}.npy", array)
            argv += ["--input", f"{input_name}={tmp_path / f'{name}-{len(argv)}.npy'}"]
        out = tmp_path / f"{name}-out"
        out.mkdir()
        run = subprocess.run(
            ["qemu-aarch64", "-cpu", "cortex-a72", "-L", str(arm_board.sysroot), str(binary), str(artifact), *argv,
             "--save-outputs", str(out)],
            capture_output=True, text=True, timeout=600,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        got = [np.load(out / f"output_{i}.npy") for i in range(len(python_outputs[name]))]
        for g, want in zip(got, python_outputs[name]):
            assert g.dtype == want.dtype and g.shape == want.shape and g.tobytes() == want.tobytes(), name
