"""PruneChannels / PruneMagnitude: Before/Expected structural tests, and what is left alone and why."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from pass_helpers import relax_main
from tvm import relax

from tvmdeploy.errors import BuildError
from tvmdeploy.compiler.passes import PruneChannels, PruneMagnitude
from tvmdeploy.compiler.analysis.channels import analyze_channels

rng = np.random.default_rng(0)


def _w(*shape):
    return rng.standard_normal(shape).astype("float32")


def _function(body, shape=(1, 3, 8, 8)) -> tvm.IRModule:
    return relax_main(body, shape)


def _conv(x, weight, groups=1):
    return relax.op.nn.conv2d(x, relax.const(weight), padding=(1, 1), groups=groups)


W1, B1, W2, B2 = _w(8, 3, 3, 3), _w(1, 8, 1, 1), _w(4, 8, 3, 3), _w(1, 4, 1, 1)
KEEP = np.array([1, 4, 6])


def test_conv_bias_relu_conv_loses_channels_in_producer_bias_and_consumer():
    def before(bb, x):
        y = bb.emit(_conv(x, W1))
        y = bb.emit(relax.op.add(y, relax.const(B1)))
        y = bb.emit(relax.op.nn.relu(y))
        y = bb.emit(_conv(y, W2))
        return relax.op.add(y, relax.const(B2))

    def expected(bb, x):
        y = bb.emit(_conv(x, W1[KEEP]))
        y = bb.emit(relax.op.add(y, relax.const(B1[:, KEEP])))
        y = bb.emit(relax.op.nn.relu(y))
        y = bb.emit(_conv(y, W2[:, KEEP]))
        return relax.op.add(y, relax.const(B2))

    after = PruneChannels({"conv2d_0": KEEP})(_function(before))
    tvm.ir.assert_structural_equal(after, _function(expected))


def test_flatten_into_dense_drops_each_channels_block_of_features():
    M = _w(8 * 4, 5)  # [C*H*W, out] after a 2x2 pool of 4x4

    def before(bb, x):
        y = bb.emit(_conv(x, W1))
        y = bb.emit(relax.op.nn.max_pool2d(y, pool_size=(2, 2), strides=(2, 2)))
        y = bb.emit(relax.op.reshape(y, (1, 32)))
        return relax.op.matmul(y, relax.const(M))

    def expected(bb, x):
        y = bb.emit(_conv(x, W1[KEEP]))
        y = bb.emit(relax.op.nn.max_pool2d(y, pool_size=(2, 2), strides=(2, 2)))
        y = bb.emit(relax.op.reshape(y, (1, 12)))
        rows = (KEEP[:, None] * 4 + np.arange(4)).reshape(-1)
        return relax.op.matmul(y, relax.const(M[rows]))

    after = PruneChannels({"conv2d_0": KEEP})(_function(before, (1, 3, 4, 4)))
    tvm.ir.assert_structural_equal(after, _function(expected, (1, 3, 4, 4)))


def test_mlp_hidden_features():
    A, b, C = _w(16, 8), _w(8), _w(8, 2)

    def before(bb, x):
        y = bb.emit(relax.op.matmul(x, relax.const(A)))
        y = bb.emit(relax.op.add(y, relax.const(b)))
        y = bb.emit(relax.op.nn.gelu(y))
        return relax.op.matmul(y, relax.const(C))

    def expected(bb, x):
        y = bb.emit(relax.op.matmul(x, relax.const(A[:, KEEP])))
        y = bb.emit(relax.op.add(y, relax.const(b[KEEP])))
        y = bb.emit(relax.op.nn.gelu(y))
        return relax.op.matmul(y, relax.const(C[KEEP]))

    after = PruneChannels({"matmul_0": KEEP})(_function(before, (1, 16)))
    tvm.ir.assert_structural_equal(after, _function(expected, (1, 16)))


def test_residual_add_couples_both_convs_and_depthwise_follows():
    Wa, Wb, Wd, Wc = _w(8, 3, 3, 3), _w(8, 8, 3, 3), _w(8, 1, 3, 3), _w(4, 8, 3, 3)

    def before(bb, x):
        a = bb.emit(relax.op.nn.relu(bb.emit(_conv(x, Wa))))
        b = bb.emit(_conv(a, Wb))
        s = bb.emit(relax.op.add(a, b))
        d = bb.emit(_conv(s, Wd, groups=8))
        return _conv(d, Wc)

    def expected(bb, x):
        a = bb.emit(relax.op.nn.relu(bb.emit(_conv(x, Wa[KEEP]))))
        b = bb.emit(_conv(a, Wb[KEEP][:, KEEP]))
        s = bb.emit(relax.op.add(a, b))
        d = bb.emit(_conv(s, Wd[KEEP], groups=3))
        return _conv(d, Wc[:, KEEP])

    graph = analyze_channels(_function(before))
    coupled = [g for g in graph.groups if len(g.producers) == 2]
    assert [p.name for p in coupled[0].producers] == ["conv2d_0", "conv2d_1"] and coupled[0].blocked is None
    after = PruneChannels({"conv2d_0": KEEP})(_function(before))
    tvm.ir.assert_structural_equal(after, _function(expected))


def test_concat_offsets_the_consumers_input_channels():
    Wa, Wb, Wc = _w(8, 3, 3, 3), _w(4, 3, 3, 3), _w(2, 12, 3, 3)

    def before(bb, x):
        a = bb.emit(_conv(x, Wa))
        b = bb.emit(_conv(x, Wb))
        y = bb.emit(relax.op.concat([a, b], axis=1))
        return _conv(y, Wc)

    keep_b = np.array([0, 3])

    def expected(bb, x):
        a = bb.emit(_conv(x, Wa[KEEP]))
        b = bb.emit(_conv(x, Wb[keep_b]))
        y = bb.emit(relax.op.concat([a, b], axis=1))
        return _conv(y, Wc[:, np.concatenate([KEEP, 8 + keep_b])])

    after = PruneChannels({"conv2d_0": KEEP, "conv2d_1": keep_b})(_function(before))
    tvm.ir.assert_structural_equal(after, _function(expected))


def test_unprunable_layers_are_listed_with_the_reason_and_refused():
    def body(bb, x):
        y = bb.emit(_conv(x, W1))
        z = bb.emit(relax.op.nn.softmax(y, axis=1))  # normalizes over the channels
        return _conv(z, W2)

    graph = analyze_channels(_function(body))
    reasons = {g.name: g.blocked for g in graph.groups}
    assert reasons["conv2d_0"] == "used by relax.nn.softmax"
    assert reasons["conv2d_1"] == "its channels reach a model output"
    # Raised inside the pass, the error crosses TVM's FFI (which re-raises it as RuntimeError).
    with pytest.raises((BuildError, RuntimeError), match="conv2d_0 cannot be pruned: used by relax.nn.softmax"):
        PruneChannels({"conv2d_0": KEEP})(_function(body))


def test_residual_from_the_model_input_blocks_the_layer():
    def body(bb, x):
        y = bb.emit(_conv(x, _w(3, 3, 3, 3)))
        s = bb.emit(relax.op.add(x, y))
        return _conv(s, _w(4, 3, 3, 3))

    reasons = {g.name: g.blocked for g in analyze_channels(_function(body)).groups}
    assert "residual" in reasons["conv2d_0"]


def test_magnitude_zeroes_masked_weights_only():
    mask = np.abs(W2) > 0.5

    def before(bb, x):
        y = bb.emit(_conv(x, W1))
        return _conv(y, W2)

    def expected(bb, x):
        y = bb.emit(_conv(x, W1))
        return _conv(y, np.where(mask, W2, 0).astype("float32"))

    after = PruneMagnitude({"conv2d_1": mask})(_function(before))
    tvm.ir.assert_structural_equal(after, _function(expected))


def test_an_error_inside_the_pass_reaches_the_caller_as_itself():
    # TVM's FFI turns exceptions raised in a pass into RuntimeError; the CLI would then
    # report a user's mistake as "unexpected" (exit 2). PassLog.run carries the type.
    from conftest import MODELS

    from tvmdeploy.compiler.frontend import import_model
    from tvmdeploy.compiler.reports import PassLog

    mod = import_model(MODELS / "mlp.onnx").mod
    with pytest.raises(BuildError, match="no prunable layer named 'nope'"):
        PassLog().run(PruneChannels({"nope": [0]}), mod)
