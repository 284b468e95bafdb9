"""The int8 passes (QuantizeWeightsInt8, QuantizeLayersInt8, FoldBiasIntoInt32): Before/Expected
structure, and the folded int32 bias against exact arithmetic."""

from __future__ import annotations

import numpy as np
import tvm
from pass_helpers import relax_main
from tvm import relax

from tvmdeploy.compiler.host_eval import HostModel
from tvmdeploy.compiler.passes.quantize_int8 import (
    FoldBiasIntoInt32,
    QuantizeLayersInt8,
    QuantizeWeightsInt8,
    quantize_weight,
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
