"""The packed u8 x s8 int8 kernels (tvmdeploy.compiler.kernels.int8_packed) and the x86 int8 path.

Kernels are built with the schedule a compile gives them without tuning (the first design
space sample that builds, tensorized with the host's int8 instruction) and compared with
numpy bit for bit; the packed graph is compared with the generic int8 graph (the same
integers, so the same floats); an AVX2 artifact is checked for its instructions and numbers.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import tvm
from tvm import relax

from tvmdeploy import compile_model, load
from tvmdeploy.compiler.calibration import sqnr_db
from tvmdeploy.data import DIGITS_CALIBRATION, DIGITS_CNN, DIGITS_TEST
from tvmdeploy.compiler.host_eval import HostModel
from tvmdeploy.compiler.kernels import int8_packed as kp
from tvmdeploy.compiler.kernels.select import packed_int8_for
from tvmdeploy.compiler.passes.quantize_int8 import QuantizeLayersInt8
from tvmdeploy.compiler.presets import load_preset, resolve_preset
from tvmdeploy.compiler.quantization import Int8Static
from tvmdeploy.compiler.tuning.default_schedule import apply_default_schedules

rng = np.random.default_rng(0)
HOST = resolve_preset(load_preset("host"))[1]
HOST_PACKED = packed_int8_for(HOST)
HOST_INTRIN = HOST_PACKED.intrinsic if HOST_PACKED else None
WMAX = HOST_PACKED.weight_max if HOST_PACKED else 127  # 63 where the instruction saturates int16
needs_int8_instruction = pytest.mark.skipif(
    HOST_PACKED is None or HOST_PACKED.lanes != 16, reason="this CPU has no x86 int8 dot-product instruction"
)


def _cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())


def _build(prim, target=HOST):
    mod, count = apply_default_schedules(tvm.IRModule({"main": prim}), target)
    assert count == 1, "the kernel got no default schedule"
    return tvm.compile(mod, target=target)


def _run(executable, *arrays, out_shape):
    dev = tvm.cpu()
    out = tvm.runtime.empty(out_shape, "int32", dev)
    executable.mod["main"](*[tvm.runtime.tensor(a, dev) for a in arrays], out)
    return out.numpy()


def _conv_reference(x, w, stride, pad, dilation):
    """int64 NHWC conv of uint8 x (padded with 128) by OHWI int8 w."""
    n, h, wd, c = x.shape
    oc, kh, kw, _ = w.shape
    xp = np.pad(x.astype(np.int64), [(0, 0), (pad[0], pad[2]), (pad[1], pad[3]), (0, 0)], constant_values=128)
    oh = (h + pad[0] + pad[2] - dilation * (kh - 1) - 1) // stride + 1
    ow = (wd + pad[1] + pad[3] - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((n, oh, ow, oc), np.int64)
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * stride: i * stride + dilation * (kh - 1) + 1: dilation,
                       j * stride: j * stride + dilation * (kw - 1) + 1: dilation, :]
            out[:, i, j, :] = np.einsum("nhwc,ohwc->no", patch, w.astype(np.int64))
    return out


def test_packing_puts_16_output_by_4_input_channels_together():
    w = rng.integers(-127, 128, (32, 3, 3, 6)).astype(np.int8)  # 6 input channels: padded to 8
    p = kp.pack_conv2d_weight(w, 16)
    assert p.shape == (2, 3, 3, 2, 16, 4)
    o, h, k, c = np.meshgrid(*map(np.arange, w.shape), indexing="ij")
    assert np.array_equal(p[o // 16, h, k, c // 4, o % 16, c % 4], w)
    assert not p[:, :, :, 1, :, 2:].any()  # the padding channels are zero weights
    d = rng.integers(-127, 128, (10, 48)).astype(np.int8)  # K=10 -> 12
    pd = kp.pack_dense_weight(d, 16)
    assert pd.shape == (3, 3, 16, 4)
    k, n = np.meshgrid(np.arange(10), np.arange(48), indexing="ij")
    assert np.array_equal(pd[n // 16, k // 4, n % 16, k % 4], d)
    assert np.array_equal(kp.zero_point_correction(d, out_axis=1), -128 * d.astype(np.int64).sum(axis=0))


@needs_int8_instruction
@pytest.mark.parametrize("shape, oc, k, stride, pad, dilation", [
    ((1, 9, 9, 16), 32, 3, 1, (1, 1, 1, 1), 1),
    ((2, 10, 10, 3), 16, 3, 2, (1, 1, 2, 2), 1),  # 3 input channels, asymmetric padding
    ((1, 8, 8, 8), 16, 3, 1, (2, 2, 2, 2), 2),  # dilation
    ((1, 7, 7, 20), 48, 1, 1, (0, 0, 0, 0), 1),  # 1x1, no padding
])
def test_conv_kernel_matches_numpy_exactly(shape, oc, k, stride, pad, dilation):
    x = rng.integers(0, 256, shape).astype(np.uint8)
    w = rng.integers(-WMAX, WMAX + 1, (oc, k, k, shape[3])).astype(np.int8)
    packed = kp.pack_conv2d_weight(w, 16)
    prim = kp.conv2d_nhwc_packed(shape, packed.shape, (stride, stride), pad, (dilation, dilation))
    ref = _conv_reference(x, w, stride, pad, dilation)
    out = _run(_build(prim), x, packed, out_shape=ref.shape)
    assert np.array_equal(out, ref)


@needs_int8_instruction
def test_dense_kernel_matches_numpy_exactly_and_uses_the_instruction():
    x = rng.integers(0, 256, (2, 5, 30)).astype(np.uint8)  # K=30: padded to 32
    w = rng.integers(-WMAX, WMAX + 1, (30, 64)).astype(np.int8)
    packed = kp.pack_dense_weight(w, 16)
    executable = _build(kp.dense_packed(x.shape, packed.shape))
    out = _run(executable, x, packed, out_shape=(2, 5, 64))
    assert np.array_equal(out, x.astype(np.int64) @ w.astype(np.int64))
    instruction = {"tvmdeploy_dot_16x4_vnni": "vpdpbusd"}.get(HOST_INTRIN, "vpmaddubsw")
    assert instruction in executable.mod.inspect_source("asm")


def _nhwc_net() -> tvm.IRModule:
    w1 = rng.standard_normal((16, 3, 3, 8)).astype(np.float32) * 0.2
    w2 = rng.standard_normal((16 * 6 * 6, 32)).astype(np.float32) * 0.05
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 6, 6, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w1), padding=[1, 1, 1, 1], data_layout="NHWC", kernel_layout="OHWI"))
            y = bb.emit(relax.op.nn.relu(y))
            y = bb.emit(relax.op.reshape(y, (1, 16 * 6 * 6)))
            out = bb.emit_output(relax.op.matmul(y, relax.const(w2)))
        bb.emit_func_output(out)
    return bb.get()


@needs_int8_instruction
def test_packed_layers_compute_what_the_generic_int8_layers_compute():
    # Same integers (q + 128 with its correction is q), so the same floats.
    mod = _nhwc_net()
    scales = {"conv2d_0": 4.5 / 127, "matmul_0": 8.0 / 127}  # about max|x| of each input
    packed = QuantizeLayersInt8(scales, packed=HOST_PACKED)(mod)
    generic = QuantizeLayersInt8(scales, packed=None, weight_max=WMAX)(mod)
    kernels = sorted(gv.name_hint for gv, f in packed.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
    assert kernels == ["conv2d_0_int8_packed", "matmul_0_int8_packed"]
    samples = [[rng.standard_normal((1, 6, 6, 8)).astype(np.float32)] for _ in range(3)]
    ours = HostModel(packed, "test").run(samples)
    theirs = HostModel(generic, "test").run(samples)
    float_out = HostModel(mod, "test").run(samples)
    for a, b, f in zip(ours, theirs, float_out):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)
        assert sqnr_db(f[0], a[0]) >= 20


@pytest.mark.skipif("avx2" not in _cpu_flags() or shutil.which("objdump") is None, reason="needs an AVX2 CPU and objdump")
def test_avx2_preset_int8_uses_vpmaddubsw_with_7_bit_weights(tmp_path):
    result = compile_model(
        DIGITS_CNN, target="x86_64-avx2", output_dir=tmp_path / "avx2", quantize=Int8Static(),
        calibration_data=DIGITS_CALIBRATION,
    )
    kernels = result.manifest.extra["quantization"]["kernels"]
    assert kernels["intrinsic"] == "tvmdeploy_dot_16x4_avx2" and kernels["weight_max"] == 63
    assert kernels["packed_layers"] == ["conv2d_0", "conv2d_1", "conv2d_2", "matmul_0"]
    library = next(p for p in result.artifact_dir.iterdir() if p.suffix == ".so")
    asm = subprocess.run(["objdump", "-d", str(library)], capture_output=True, text=True, check=True).stdout
    assert "vpmaddubsw" in asm and "zmm" not in asm
    test = np.load(DIGITS_TEST)
    fp32 = load(compile_model(DIGITS_CNN, output_dir=tmp_path / "fp32").artifact_dir)
    int8 = load(result.artifact_dir)
    ref = np.concatenate([fp32(x[None])[0] for x in test["image"]])
    out = np.concatenate([int8(x[None])[0] for x in test["image"]])
    assert sqnr_db(ref, out) >= 20
    accuracy = [100 * np.mean(o.argmax(axis=1) == test["label"]) for o in (ref, out)]
    assert accuracy[1] >= accuracy[0] - 0.5


@needs_int8_instruction
def test_tuned_int8_kernels_and_a_later_fp32_compile_sharing_the_cache(tmp_path):
    """A few tuning trials on the packed kernels (tensorized candidates, measured), the
    tuned artifact computes what the untuned one does; then a fresh process compiling
    fp32 with the same cache reads records whose traces tensorize with tvmdeploy's
    intrinsics (it used to fail: not registered there yet)."""
    import sys

    from tvmdeploy.compiler.tuning.tuner import TuningBudget

    cache = tmp_path / "cache"
    options = dict(quantize=Int8Static(), calibration_data=DIGITS_CALIBRATION)
    tuned = compile_model(
        DIGITS_CNN, output_dir=tmp_path / "tuned", tune=TuningBudget(trials=16, trials_per_task=4), cache_dir=cache,
        **options,
    )
    report = tuned.manifest.extra["tuning"]
    assert report["trials"] > 0 and any("int8_packed" in t["name"] and t["best_ms"] for t in report["tasks"])
    untuned = load(compile_model(DIGITS_CNN, output_dir=tmp_path / "untuned", **options).artifact_dir)
    model = load(tuned.artifact_dir)
    images = np.load(DIGITS_TEST)["image"][:32]
    for x in images:
        np.testing.assert_allclose(model(x[None])[0], untuned(x[None])[0], rtol=1e-5, atol=1e-5)
    proc = subprocess.run(
        [sys.executable, "-m", "tvmdeploy", "compile", str(DIGITS_CNN), "--cache-dir", str(cache), "-o", str(tmp_path / "fp32")],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
