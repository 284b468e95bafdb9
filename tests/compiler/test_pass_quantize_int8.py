"""The int8 passes (QuantizeWeightsInt8, QuantizeLayersInt8 with per-tensor and per-token
activation scales, SmoothLayerInputs, FoldBiasIntoInt32): Before/Expected structure, and
the numbers they compute against exact arithmetic."""

from __future__ import annotations

import numpy as np
import tvm
from pass_helpers import relax_main, verify_pass
from tvm import relax

from tvmdeploy.compiler.calibration import sqnr_db
from tvmdeploy.compiler.host_eval import HostModel
from tvmdeploy.compiler.passes.quantize_int8 import (
    FoldBiasIntoInt32,
    QuantizeLayersInt8,
    QuantizeWeightsInt8,
    SmoothLayerInputs,
    quantize_weight,
    smoothing_factors,
)

rng = np.random.default_rng(0)
W = rng.standard_normal((16, 8)).astype("float32")


def _function(body, shape=(1, 16)) -> tvm.IRModule:
    return relax_main(body, shape)


def test_quantize_weight_is_symmetric_per_output_channel():
    q, scale = quantize_weight(W, out_axis=1)
    assert q.dtype == np.int8 and scale.shape == (1, 8)
    assert np.all(np.abs(q).max(axis=0) == 127)  # every channel uses its full range
    assert np.max(np.abs(q * scale - W)) <= scale.max() / 2 + 1e-7


def test_weight_only_pass_replaces_the_weight_with_an_int8_decode():
    q, scale = quantize_weight(W, out_axis=1)

    def before(bb, x):
        return relax.op.matmul(x, relax.const(W))

    def expected(bb, x):
        decoded = relax.op.multiply(relax.op.astype(relax.const(q), "float32"), relax.const(scale))
        return relax.op.matmul(x, decoded)

    tvm.ir.assert_structural_equal(QuantizeWeightsInt8()(_function(before)), _function(expected))


def test_static_pass_computes_int8_by_int8_into_int32():
    q, s_w = quantize_weight(W, out_axis=1)
    s_x = 0.05

    def before(bb, x):
        return relax.op.matmul(x, relax.const(W))

    def expected(bb, x):
        xq = relax.op.astype(relax.op.clip(relax.op.round(relax.op.divide(x, relax.const(np.float32(s_x)))), -128, 127), "int8")
        acc = relax.op.matmul(xq, relax.const(q), out_dtype="int32")
        return relax.op.multiply(relax.op.astype(acc, "float32"), relax.const((s_x * s_w).reshape(-1).astype("float32")))

    tvm.ir.assert_structural_equal(QuantizeLayersInt8({"matmul_0": s_x})(_function(before)), _function(expected))


def test_bias_joins_the_int32_accumulator():
    q, s_w = quantize_weight(W, out_axis=1)
    s_x = 0.05
    rescale = (s_x * s_w).reshape(-1).astype("float32")
    bias = rng.standard_normal(8).astype("float32")
    correction = rng.integers(-1000, 1000, 8).astype("int32")  # e.g. the packed kernels' zero-point term

    def quantized(bb, x, folded=False):
        xq = relax.op.astype(x, "int8")
        acc = relax.op.matmul(xq, relax.const(q), out_dtype="int32")
        if folded:
            steps = correction + np.round(bias.astype(np.float64) / rescale.astype(np.float64)).astype(np.int32)
            return relax.op.multiply(relax.op.astype(relax.op.add(acc, relax.const(steps)), "float32"), relax.const(rescale))
        acc = relax.op.add(acc, relax.const(correction))
        return relax.op.add(relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(rescale)), relax.const(bias))

    before = _function(quantized)
    after = FoldBiasIntoInt32()(before)
    tvm.ir.assert_structural_equal(after, _function(lambda bb, x: quantized(bb, x, folded=True)))
    # Same numbers up to half an accumulator step per channel.
    x = rng.integers(-128, 128, (1, 16)).astype(np.float32)
    exact = HostModel(before, "test").run([[x]])[0][0]
    folded = HostModel(after, "test").run([[x]])[0][0]
    assert np.all(np.abs(exact - folded) <= rescale / 2 + 1e-5)


def _per_token_expected(bb, x, q, s_w, inverse=None):
    """What a per-token int8 matmul computes: one scale per row of x, at run time."""
    if inverse is not None:
        x = bb.emit(relax.op.multiply(x, relax.const(inverse)))
    magnitude = bb.emit(relax.op.abs(x))
    peak = bb.emit(relax.op.max(magnitude, axis=-1, keepdims=True))
    floor = bb.emit(relax.op.maximum(peak, relax.const(np.float32(1e-12))))
    row = bb.emit(relax.op.divide(floor, relax.const(np.float32(127.0))))
    xq = bb.emit(relax.op.astype(relax.op.clip(relax.op.round(relax.op.divide(x, row)), -128, 127), "int8"))
    acc = bb.emit(relax.op.matmul(xq, relax.const(q), out_dtype="int32"))
    rescaled = bb.emit(relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(s_w.reshape(-1).astype("float32"))))
    return relax.op.multiply(rescaled, row)


def _shared(mod):
    # What the int8 handler runs after the rewrite: each row scale computed once.
    return relax.transform.CanonicalizeBindings()(relax.transform.EliminateCommonSubexpr()(mod))


def test_per_token_pass_scales_each_row_at_run_time():
    q, s_w = quantize_weight(W, out_axis=1)

    def before(bb, x):
        return relax.op.matmul(x, relax.const(W))

    after = QuantizeLayersInt8({}, per_token=["matmul_0"])(relax_main(before, (2, 4, 16)))
    tvm.ir.assert_structural_equal(_shared(after), relax_main(lambda bb, x: _per_token_expected(bb, x, q, s_w), (2, 4, 16)))
    # Rows 100x apart each keep int8's full resolution: the error is relative to the row.
    x = rng.standard_normal((2, 4, 16)).astype(np.float32) * np.logspace(-1, 1, 4)[None, :, None].astype(np.float32)
    out = HostModel(after, "test").run([[x]])[0][0]
    exact = x.astype(np.float64) @ W
    for row_out, row_exact in zip(out.reshape(-1, 8), exact.reshape(-1, 8)):
        assert sqnr_db(row_exact, row_out) >= 30


def test_smoothing_moves_input_channel_outliers_into_the_weight():
    s = smoothing_factors(np.linspace(0.1, 20.0, 16), W, alpha=0.5)
    assert s.shape == (16,) and s[-1] > 5 * s[0]  # outlier channels are divided down the most

    def before(bb, x):
        return relax.op.matmul(x, relax.const(W))

    def expected(bb, x):
        smoothed = relax.op.multiply(x, relax.const((1.0 / s).astype(np.float32)))
        return relax.op.matmul(smoothed, relax.const((W.astype(np.float64) * s[:, None]).astype(np.float32)))

    mod = _function(before)
    after = verify_pass(SmoothLayerInputs({"matmul_0": s}), mod, _function(expected))
    # The same product in float; only the quantized layer rounds differently.
    x = rng.standard_normal((1, 16)).astype(np.float32)
    np.testing.assert_allclose(HostModel(after, "test").run([[x]])[0][0], x @ W, rtol=1e-4, atol=1e-4)
    # With smoothing and per-token scales: the factors stay in front of the row-scale reduction.
    q, s_w = quantize_weight((W.astype(np.float64) * s[:, None]).astype(np.float32), out_axis=1)
    quantized = _shared(QuantizeLayersInt8({}, per_token=["matmul_0"])(after))
    inverse = (1.0 / s).astype(np.float32)
    tvm.ir.assert_structural_equal(quantized, _function(lambda bb, x: _per_token_expected(bb, x, q, s_w, inverse)))


def test_smoothing_leaves_unnamed_layers_and_convs_alone():
    mod = _function(lambda bb, x: relax.op.matmul(x, relax.const(W)))
    tvm.ir.assert_structural_equal(SmoothLayerInputs({"matmul_1": np.ones(16)})(mod), mod)
    tvm.ir.assert_structural_equal(SmoothLayerInputs({"matmul_0": np.ones(3)})(mod), mod)  # wrong length
