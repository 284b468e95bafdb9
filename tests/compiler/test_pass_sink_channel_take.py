"""SinkChannelTake: Before/Expected, what it leaves alone, and the same numbers."""

from __future__ import annotations

import numpy as np
import tvm
from pass_helpers import relax_main, verify_pass
from tvm import relax

from tvmdeploy.compiler.passes.sink_channel_take import SinkChannelTake
from tvmdeploy.compiler.presets import load_preset, resolve_preset

SHAPE = (1, 3, 4, 8)  # NHWC: 2 groups of 3 channels, each padded to 4
DROP = np.array([0, 1, 2, 4, 5, 6], dtype="int32")
SHUFFLE = np.array([0, 3, 1, 4, 2, 5], dtype="int32")
BIAS = np.arange(1, 7, dtype="float32").reshape(1, 1, 1, 6)


def _take(x, index):
    return relax.op.take(x, relax.const(index), axis=3, mode="clip")


def _unit(bb, x, bias=BIAS):
    """A padded grouped conv's channel drop, its bias and ReLU, then the shuffle."""
    y = bb.emit(_take(x, DROP))
    y = bb.emit(relax.op.add(y, relax.const(bias)))
    y = bb.emit(relax.op.nn.relu(y))
    return _take(y, SHUFFLE)


def _run(mod, *arrays):
    target = resolve_preset(load_preset("host"))[1]
    vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in arrays]).numpy()


def _sunk(mod):
    return relax.transform.DeadCodeElimination()(SinkChannelTake()(mod))


def test_bias_and_activation_act_before_one_composed_gather():
    def expected(bb, x):
        spread = np.zeros((1, 1, 1, 8), "float32")
        spread[..., DROP] = BIAS.reshape(-1)  # the padding channels get 0
        y = bb.emit(relax.op.add(x, relax.const(spread)))
        y = bb.emit(relax.op.nn.relu(y))
        return _take(y, DROP[SHUFFLE])

    verify_pass(lambda m: m, _sunk(relax_main(_unit, SHAPE)), relax_main(expected, SHAPE))


def test_an_identity_gather_disappears():
    def before(bb, x):
        return relax.op.nn.relu(bb.emit(_take(x, np.arange(8, dtype="int32"))))

    verify_pass(lambda m: m, _sunk(relax_main(before, SHAPE)), relax_main(lambda bb, x: relax.op.nn.relu(x), SHAPE))


def test_gathers_it_cannot_move_are_left_alone():
    def read_twice(bb, x):
        y = bb.emit(_take(x, DROP))
        return relax.op.add(bb.emit(relax.op.nn.relu(y)), y)

    def repeated_channel(bb, x):
        return relax.op.add(bb.emit(_take(x, np.array([0, 0, 1], "int32"))), relax.const(np.ones((1, 1, 1, 3), "float32")))

    def not_per_channel(bb, x):
        bias = np.ones((1, 3, 1, 6), "float32")
        return relax.op.add(bb.emit(_take(x, DROP)), relax.const(bias))

    def other_axis(bb, x):
        return relax.op.nn.relu(bb.emit(relax.op.take(x, relax.const(np.array([0, 2], "int32")), axis=1)))

    for body in (read_twice, repeated_channel, not_per_channel, other_axis):
        mod = relax_main(body, SHAPE)
        verify_pass(_sunk, mod, relax.transform.DeadCodeElimination()(mod))


def test_same_numbers():
    x = np.random.default_rng(0).standard_normal(SHAPE).astype("float32")
    mod = relax_main(_unit, SHAPE)
    np.testing.assert_array_equal(_run(_sunk(mod), x), _run(mod, x))
