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


def _gather_then_residual(index_is_constant: bool) -> tvm.IRModule:
    """ShuffleNet's drop before its residual add: gather, add the residual, ReLU."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    r = relax.Var("r", relax.TensorType((1, 3, 4, 6), "float32"))
    index = relax.Var("index", relax.TensorType((6,), "int32"))
    with bb.function("main", [x, r] + ([] if index_is_constant else [index])):
        with bb.dataflow():
            y = bb.emit(_take(x, DROP) if index_is_constant else relax.op.take(x, index, axis=3, mode="clip"))
            y = bb.emit(relax.op.add(y, r))
            out = bb.emit_output(relax.op.nn.relu(y))
        bb.emit_func_output(out)
    return bb.get()


def test_a_constant_gather_left_over_fuses_into_the_ops_after_it():
    from tvmdeploy.compiler.lowering import lower
    from tvmdeploy.compiler.tuning.default_schedule import apply_default_schedules

    target = resolve_preset(load_preset("host"))[1]
    for constant, kernels in ((True, 1), (False, 2)):  # a gather by a runtime index stays a kernel of its own
        lowered, _ = lower(_gather_then_residual(constant), target)
        calls = [b.value for b in lowered["main"].body.blocks[0].bindings if isinstance(b.value, relax.Call)]
        assert len(calls) == kernels, lowered["main"]
    rng = np.random.default_rng(0)
    x, r = rng.standard_normal(SHAPE).astype("float32"), rng.standard_normal((1, 3, 4, 6)).astype("float32")
    scheduled, _ = apply_default_schedules(lower(_gather_then_residual(True), target)[0], target)
    vm = relax.VirtualMachine(tvm.compile(scheduled, target=target), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(r)).numpy()
    np.testing.assert_array_equal(got, np.maximum(x[..., DROP] + r, 0))
