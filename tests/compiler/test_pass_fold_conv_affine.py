"""FoldConvChannelAffine: Before/Expected structural tests, and end to end on a torch export."""

from __future__ import annotations

import numpy as np
import tvm
from conftest import MODELS
from pass_helpers import relax_main
from tvm import relax

from tvmdeploy.compiler.passes import FoldConvChannelAffine

rng = np.random.default_rng(0)
C = 8
W = rng.standard_normal((C, 3, 3, 3)).astype("float32")
BIAS = rng.standard_normal((1, C, 1, 1)).astype("float32")
MEAN = rng.standard_normal((1, C, 1, 1)).astype("float32")
STD = rng.uniform(0.5, 2.0, (1, C, 1, 1)).astype("float32")
GAMMA = rng.standard_normal((1, C, 1, 1)).astype("float32")
BETA = rng.standard_normal((1, C, 1, 1)).astype("float32")


def _function(body) -> tvm.IRModule:
    return relax_main(body, (1, 3, 16, 16))


def _conv(x, weight):
    return relax.op.nn.conv2d(x, relax.const(weight), padding=(1, 1))


def run_pass(mod):
    return relax.transform.DeadCodeElimination()(FoldConvChannelAffine()(mod))


def test_biased_conv_then_decomposed_batchnorm_folds_to_one_conv_and_add():
    def before(bb, x):
        y = bb.emit(_conv(x, W))
        y = bb.emit(relax.op.add(y, relax.const(BIAS)))
        y = bb.emit(relax.op.subtract(y, relax.const(MEAN)))
        y = bb.emit(relax.op.divide(y, relax.const(STD)))
        y = bb.emit(relax.op.multiply(y, relax.const(GAMMA)))
        y = bb.emit(relax.op.add(y, relax.const(BETA)))
        return relax.op.nn.relu(y)

    def expected(bb, x):
        # The same arithmetic, in the same order, as the pass: bit-identical constants.
        weight = W / STD.reshape(C)[:, None, None, None]
        weight = weight * GAMMA.reshape(C)[:, None, None, None]
        shift = ((BIAS.reshape(C) - MEAN.reshape(C)) / STD.reshape(C)) * GAMMA.reshape(C) + BETA.reshape(C)
        y = bb.emit(_conv(x, weight.astype("float32")))
        y = bb.emit(relax.op.add(y, relax.const(shift.astype("float32").reshape(1, C, 1, 1))))
        return relax.op.nn.relu(y)

    tvm.ir.assert_structural_equal(run_pass(_function(before)), _function(expected))


def test_scale_on_the_left_and_bare_conv():
    def before(bb, x):
        y = bb.emit(_conv(x, W))
        y = bb.emit(relax.op.multiply(relax.const(GAMMA), y))
        return relax.op.nn.relu(y)

    def expected(bb, x):
        y = bb.emit(_conv(x, W * GAMMA.reshape(C)[:, None, None, None]))
        return relax.op.nn.relu(y)

    tvm.ir.assert_structural_equal(run_pass(_function(before)), _function(expected))


def test_conv_with_a_second_user_is_left_alone():
    """Folding would compute the convolution twice (once scaled, once for the residual)."""

    def before(bb, x):
        y = bb.emit(_conv(x, W))
        scaled = bb.emit(relax.op.multiply(y, relax.const(GAMMA)))
        return relax.op.add(scaled, y)

    mod = _function(before)
    tvm.ir.assert_structural_equal(run_pass(mod), mod)


def test_constant_varying_over_space_is_left_alone():
    def before(bb, x):
        y = bb.emit(_conv(x, W))
        return relax.op.multiply(y, relax.const(rng.standard_normal((1, C, 16, 16)).astype("float32")))

    mod = _function(before)
    tvm.ir.assert_structural_equal(run_pass(mod), mod)


def test_subtracting_from_a_constant_is_left_alone():
    def before(bb, x):
        y = bb.emit(_conv(x, W))
        return relax.op.subtract(relax.const(MEAN), y)

    mod = _function(before)
    tvm.ir.assert_structural_equal(run_pass(mod), mod)


def test_torch_conv_bn_relu_has_no_batchnorm_arithmetic_left():
    from tvmdeploy.compiler.frontend import import_model
    from tvmdeploy.compiler.optimize import optimize_graph

    mod, report = optimize_graph(import_model(MODELS / "conv_bn_relu.onnx").mod)
    ops = {call.op.name for call in _calls(mod["main"])}
    assert "relax.nn.conv2d" in ops
    assert not ops & {"relax.nn.batch_norm", "relax.subtract", "relax.divide", "relax.multiply"}, ops
    assert "FoldConvChannelAffine" in report.passes


def _calls(func):
    found = []
    relax.analysis.post_order_visit(func, lambda e: found.append(e) if isinstance(e, relax.Call) and hasattr(e.op, "name") else None)
    return found
