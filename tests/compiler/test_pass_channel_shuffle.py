"""ChannelShuffleNHWC: Before/Expected, what it leaves alone, and the same numbers."""

from __future__ import annotations

import numpy as np
import tvm
from pass_helpers import relax_main, verify_pass
from tvm import relax

from tvmdeploy.compiler.passes.channel_shuffle import ChannelShuffleNHWC
from tvmdeploy.compiler.presets import load_preset, resolve_preset

SHAPE = (1, 5, 6, 12)  # NHWC, 3 groups of 4 channels


def _nchw_shuffle(bb, x, groups=3, swap=(0, 2, 1, 3, 4)):
    n, h, w, c = SHAPE
    y = bb.emit(relax.op.permute_dims(x, [0, 3, 1, 2]))
    y = bb.emit(relax.op.reshape(y, [n, groups, c // groups, h, w]))
    y = bb.emit(relax.op.permute_dims(y, list(swap)))
    y = bb.emit(relax.op.reshape(y, [n, c, h, w]))
    return bb.emit(relax.op.permute_dims(y, [0, 2, 3, 1]))


def test_shuffle_through_nchw_becomes_an_nhwc_shuffle():
    def expected(bb, x):
        # Output channel i * 3 + g reads channel g * 4 + i: one gather along C.
        source = np.array([0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11], dtype="int32")
        return relax.op.take(x, relax.const(source), axis=3, mode="clip")

    after = relax.transform.DeadCodeElimination()(ChannelShuffleNHWC()(relax_main(_nchw_shuffle, SHAPE)))
    verify_pass(lambda m: m, after, relax_main(expected, SHAPE))


def test_other_transposes_are_left_alone():
    mod = relax_main(lambda bb, x: _nchw_shuffle(bb, x, swap=(0, 1, 2, 4, 3)), SHAPE)
    verify_pass(ChannelShuffleNHWC(), mod, mod)


def test_same_numbers_as_the_nchw_shuffle():
    _, target = resolve_preset(load_preset("host"))
    before = relax_main(_nchw_shuffle, SHAPE)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    outs = []
    for mod in (before, ChannelShuffleNHWC()(before)):
        vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
        outs.append(vm["main"](tvm.runtime.tensor(x)).numpy())
    np.testing.assert_array_equal(outs[0], outs[1])
    nchw = x.transpose(0, 3, 1, 2).reshape(1, 3, 4, 5, 6).transpose(0, 2, 1, 3, 4).reshape(1, 12, 5, 6)
    np.testing.assert_array_equal(outs[1], nchw.transpose(0, 2, 3, 1))
