"""WinogradConv2dFp32: Before/Expected structure, the convolutions it leaves direct, the
numbers of the lowered and scheduled kernels against a float64 numpy convolution (odd
sizes, padding, batch, the fused epilogue), the schedules on every CPU preset, and a
real export against ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from conftest import LIGHT, ort_run, random_inputs
from pass_helpers import relax_main as _module, verify_pass
from test_fp32_packed_kernels import conv2d_reference
from tvm import relax

from tvmdeploy import compile_model
from tvmdeploy.compiler import _tvm
from tvmdeploy.compiler.kernels.fp32_winograd import (
    INPUT_BLOCK,
    OUTPUT_BLOCK,
    transform_weight,
    winograd_input,
    winograd_output,
)
from tvmdeploy.compiler.kernels.winograd_schedule import is_winograd_transform, winograd_schedule
from tvmdeploy.compiler.kernels.select import target_vector_shape
from tvmdeploy.compiler.lowering import lower
from tvmdeploy.compiler.passes.winograd_conv2d import WinogradConv2dFp32, winograd_saving
from tvmdeploy.compiler.presets import load_preset, resolve_preset
from tvmdeploy.compiler.tuning.default_schedule import apply_default_schedules
from tvmdeploy.runtime import load

rng = np.random.default_rng(0)


def _weight(out_channels, in_channels, size=3):
    return (rng.standard_normal((out_channels, size, size, in_channels)) / np.sqrt(9 * in_channels)).astype("float32")


def _conv(x, weight, padding=(1, 1), **attrs):
    return relax.op.nn.conv2d(x, relax.const(weight), padding=padding, data_layout="NHWC", kernel_layout="OHWI", **attrs)


def _kernel(bb, func, name, pattern):
    func = func.with_attr("op_pattern", pattern)
    gv = bb.add_func(func, name)
    bb.update_func(gv, func.with_attr("global_symbol", gv.name_hint))
    return gv


W = _weight(32, 16)


def test_a_3x3_conv_becomes_input_transform_grouped_conv_output_transform():
    shape = (1, 10, 10, 16)

    def expected(bb, x):
        to_input = _kernel(bb, winograd_input(shape, [1, 1, 1, 1]), INPUT_BLOCK, _tvm.OP_PATTERN_OPAQUE)
        v = bb.emit(relax.call_tir(to_input, relax.Tuple([x]), relax.TensorType([1, 1, 9, 36 * 16], "float32")))
        m = bb.emit(_conv(v, transform_weight(W), padding=(0, 0), groups=36))
        to_output = _kernel(bb, winograd_output(1, 10, 10, 32), OUTPUT_BLOCK, _tvm.OP_PATTERN_OUT_ELEMWISE_FUSABLE)
        return relax.call_tir(to_output, relax.Tuple([m]), relax.TensorType([1, 10, 10, 32], "float32"))

    verify_pass(WinogradConv2dFp32(16), _module(lambda bb, x: _conv(x, W), shape), _module(expected, shape))


def test_transformed_weight_is_g_w_gt_per_tile_point():
    w = _weight(16, 16)
    u = transform_weight(w)
    assert u.shape == (36 * 16, 1, 1, 16) and u.dtype == np.float32
    # The centre tap alone: G's middle column, outer product, per (k, c).
    centre = np.zeros_like(w)
    centre[:, 1, 1, :] = 1.0
    points = transform_weight(centre).reshape(6, 6, 16, 16)[..., 0, 0]
    g_mid = np.array([0, -1 / 6, 1 / 6, 1 / 12, -1 / 12, 0])
    np.testing.assert_allclose(points, np.outer(g_mid, g_mid), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "case, shape, weight, attrs",
    [
        ("stride-2", (1, 10, 10, 16), W, {"strides": (2, 2)}),
        ("dilated", (1, 12, 12, 16), W, {"dilation": (2, 2)}),
        ("depthwise", (1, 10, 10, 16), _weight(16, 1), {"groups": 16}),
        ("1x1", (1, 10, 10, 16), _weight(32, 16, 1), {"padding": (0, 0)}),
        ("channels-not-whole-vectors", (1, 10, 10, 8), _weight(32, 8), {}),
        ("output-5x5", (1, 5, 5, 16), W, {}),  # 4 tiles for 25 pixels: 1.6x fewer multiplications
        ("4-tiles", (1, 7, 7, 16), W, {}),  # 3x fewer multiplications, but a 4x weight serving 4 tiles
    ],
)
def test_convs_winograd_does_not_pay_for_stay_direct(case, shape, weight, attrs):
    mod = _module(lambda bb, x: _conv(x, weight, **{"padding": (1, 1), **attrs}), shape)
    verify_pass(WinogradConv2dFp32(16), mod, mod)


def test_a_batch_brings_enough_tiles():
    mod = _module(lambda bb, x: _conv(x, W), (2, 7, 7, 16))  # 2 images x 2 x 2 tiles
    after = WinogradConv2dFp32(16)(mod)
    assert sorted(gv.name_hint for gv in after.functions.keys()) == ["main", "winograd_input", "winograd_output"]


def test_saving_counts_the_tiles_past_the_edge():
    assert winograd_saving(56, 56) == 4.0
    assert winograd_saving(7, 7) == pytest.approx(9 * 49 / (36 * 4))  # 3.06: 2x2 tiles cover 8x8
    assert winograd_saving(3, 3) == pytest.approx(81 / 36)
    assert winograd_saving(5, 5) < 2 <= winograd_saving(6, 6)


def _build_and_run(mod, target, x):
    lowered, report = lower(mod, target)
    scheduled, _ = apply_default_schedules(lowered, target)
    transforms = [f for _, f in lowered.functions_items() if isinstance(f, _tvm.PrimFunc) and is_winograd_transform(f)]
    vm = relax.VirtualMachine(_tvm.compile_executable(scheduled, target), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy(), report, transforms


@pytest.mark.parametrize(
    "shape, channels, padding",
    [
        ((1, 13, 13, 32), 48, (1, 1)),  # 13 = 3 tiles + 1 row past the edge
        ((2, 9, 11, 16), 32, (0, 0)),  # batch 2, no padding, 7x9 output
        ((1, 12, 12, 16), 16, (2, 1, 0, 1)),  # asymmetric padding
    ],
    ids=["13x13", "batch2-unpadded", "asymmetric-padding"],
)
def test_winograd_kernels_match_a_float64_convolution_with_their_epilogue(shape, channels, padding):
    """conv -> bias -> ReLU -> + residual: the epilogue fuses into the output transform's
    kernel, which gets the Winograd schedule (not the generic fallback)."""
    _, target = resolve_preset(load_preset("host"))
    w = _weight(channels, shape[3])
    bias = rng.standard_normal(channels).astype("float32")
    pad = padding if len(padding) == 4 else (padding[0], padding[1], padding[0], padding[1])
    out_h = shape[1] + pad[0] + pad[2] - 2
    out_w = shape[2] + pad[1] + pad[3] - 2
    residual = rng.standard_normal((shape[0], out_h, out_w, channels)).astype("float32")

    def body(bb, x):
        y = bb.emit(_conv(x, w, padding=padding))
        y = bb.emit(relax.op.nn.relu(relax.op.add(y, relax.const(bias))))
        return relax.op.add(y, relax.const(residual))

    x = rng.standard_normal(shape).astype("float32")
    got, report, transforms = _build_and_run(_module(body, shape), target, x)
    want = np.maximum(conv2d_reference(x, w, (1, 1), pad, (1, 1), 1) + bias, 0) + residual
    assert report.winograd_conv2d == 1 and "WinogradConv2dFp32" in report.passes
    assert len(transforms) == 2 and all(winograd_schedule(f, 16, 2) is not None for f in transforms)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("preset", ["x86_64", "x86_64-avx2", "x86_64-avx512", "aarch64-cortex-a72"])
def test_schedules_build_for_every_cpu_preset(preset):
    _, target = resolve_preset(load_preset(preset))
    lanes, _ = target_vector_shape(target)
    shape = (1, 14, 14, 16)
    mod = _module(lambda bb, x: relax.op.nn.relu(bb.emit(_conv(x, _weight(32, 16)))), shape)
    lowered, report = lower(mod, target)
    assert report.winograd_conv2d == 1
    for _, func in lowered.functions_items():
        if isinstance(func, _tvm.PrimFunc) and is_winograd_transform(func):
            assert winograd_schedule(func, lanes, 2) is not None
    scheduled, _ = apply_default_schedules(lowered, target)
    assert _tvm.builds(scheduled, target)


def test_light_squeezenet_runs_its_3x3_convs_as_winograd_and_matches_onnxruntime(tmp_path):
    path = LIGHT / "light_squeezenet.onnx"
    result = compile_model(path, "host", output_dir=tmp_path / "a", cache_dir=tmp_path / "c")
    assert result.reports.lowering.winograd_conv2d == 8  # every fire module's 3x3 expand conv
    feeds = random_inputs(path)
    (got,) = load(result.artifact_dir)(**feeds)
    (want,) = ort_run(path, feeds)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(want).max())))
