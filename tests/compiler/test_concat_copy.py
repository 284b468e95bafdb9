"""Concatenation kernels (kernels/concat_copy.py): along the channels in NHWC (SqueezeNet's
fire modules), with a fused activation, along an inner axis of NCHW, and with uneven
inputs, they get the vectorized copy and the same numbers as numpy; kernels that are not
a plain concatenation keep the generic default."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from tvmdeploy.compiler.kernels.concat_copy import NotConcat, concat_axis, concat_schedule
from tvmdeploy.compiler.presets import load_preset, resolve_preset
from tvmdeploy.compiler.tuning.default_schedule import apply_default_schedules

# (input shapes, axis, fused relu, vectorized)
CASES = {
    "nhwc-fire": ([(1, 13, 13, 64), (1, 13, 13, 64)], 3, False, True),
    "nhwc-relu": ([(2, 9, 9, 32), (2, 9, 9, 32)], 3, True, True),
    "nhwc-uneven": ([(1, 7, 7, 48), (1, 7, 7, 80), (1, 7, 7, 16)], 3, False, True),
    "nchw-channels": ([(1, 64, 6, 6), (1, 32, 6, 6)], 1, False, True),
    "odd-runs": ([(1, 5, 5, 29), (1, 5, 5, 58)], 3, False, False),
}


def _fused_kernels(shapes, axis, relu):
    bb = relax.BlockBuilder()
    xs = [relax.Var(f"x{i}", relax.TensorType(s, "float32")) for i, s in enumerate(shapes)]
    with bb.function("main", xs):
        with bb.dataflow():
            out = bb.emit(relax.op.concat(xs, axis=axis))
            if relu:
                out = bb.emit(relax.op.nn.relu(out))
            out = bb.emit_output(out)
        bb.emit_func_output(out)
    mod = relax.transform.LegalizeOps()(bb.get())
    return relax.transform.FuseTIR()(relax.transform.FuseOps()(relax.transform.AnnotateTIROpPattern()(mod)))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", list(CASES))
def test_concatenations_copy_in_vectors_and_match(case, threads):
    shapes, axis, relu, vectorized = CASES[case]
    _, target = resolve_preset(load_preset("host"))
    mod = _fused_kernels(shapes, axis, relu)
    kernels = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(kernels) == 1
    schedule = concat_schedule(kernels[0], threads)
    assert schedule is not None, "the concat schedule did not apply"
    text = schedule.mod["main"].script()
    assert ("T.vectorized" in text) == vectorized and ("T.parallel" in text) == (threads > 1)
    scheduled, count = apply_default_schedules(mod, target)
    assert count == 1
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(s).astype("float32") for s in shapes]
    got = relax.VirtualMachine(tvm.compile(scheduled, target=target), tvm.cpu())["main"](*map(tvm.runtime.tensor, xs))
    want = np.concatenate(xs, axis=axis)
    np.testing.assert_array_equal(got.numpy(), np.maximum(want, 0) if relu else want)


def test_a_concatenation_is_tuned_in_its_own_one_point_space():
    from tvmdeploy.compiler.kernels.select import packed_space

    _, target = resolve_preset(load_preset("host"))
    kernels = [f for f in _fused_kernels(*CASES["nhwc-relu"][:3]).functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    space = packed_space(kernels[0], target)
    assert space is not None and type(space).__name__ == "ScheduleFn"


def test_the_axis_is_where_the_inputs_add_up_to_the_output():
    assert concat_axis([1, 5, 5, 96], [[1, 5, 5, 32], [1, 5, 5, 64]]) == 3
    assert concat_axis([1, 96, 5, 5], [[1, 32, 5, 5], [1, 64, 5, 5]]) == 1
    for out, ins in [
        ([1, 5, 5, 96], [[1, 5, 5, 96]]),  # one input: a copy
        ([1, 5, 5, 96], [[1, 5, 5, 32], [1, 5, 5, 32]]),  # extents do not add up
        ([1, 6, 5, 96], [[1, 3, 5, 32], [1, 3, 5, 64]]),  # two axes differ
        ([1, 5, 5, 96], [[5, 5, 32], [5, 5, 64]]),  # another rank (a broadcast)
    ]:
        with pytest.raises(NotConcat):
            concat_axis(out, ins)


def test_other_copies_keep_the_generic_default():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 8, 16), "float32"))
    b = relax.Var("b", relax.TensorType((16,), "float32"))
    with bb.function("main", [x, b]):
        with bb.dataflow():
            # a broadcast bias add fused before the concat: an input of another rank
            y = bb.emit(relax.op.add(x, b))
            out = bb.emit_output(bb.emit(relax.op.concat([y, x], axis=3)))
        bb.emit_func_output(out)
    mod = relax.transform.LegalizeOps()(bb.get())
    mod = relax.transform.FuseTIR()(relax.transform.FuseOps()(relax.transform.AnnotateTIROpPattern()(mod)))
    kernels = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert kernels and all(concat_schedule(f, 2) is None for f in kernels)
