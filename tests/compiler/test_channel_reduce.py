"""Channel-keeping reductions (kernels/channel_reduce.py): pooling and spatial means in
NHWC get the channel-vectorized schedule and the same numbers; kernels that reduce the
innermost axis or read two tensors keep the generic default."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from pass_helpers import relax_main
from tvm import relax

from tvmdeploy.compiler.kernels.channel_reduce import channel_reduce_schedule
from tvmdeploy.compiler.presets import load_preset, resolve_preset
from tvmdeploy.compiler.tuning.default_schedule import apply_default_schedules

TAKEN = {
    "max-pool": (lambda bb, x: relax.op.nn.max_pool2d(x, 3, 2, 1, layout="NHWC"), (1, 30, 30, 64)),
    "avg-pool": (lambda bb, x: relax.op.nn.avg_pool2d(x, 3, 2, 1, layout="NHWC"), (2, 15, 15, 24)),
    "global-mean": (lambda bb, x: relax.op.mean(x, axis=[1, 2], keepdims=True), (1, 13, 13, 1000)),
    "pool-relu": (lambda bb, x: relax.op.nn.relu(bb.emit(relax.op.nn.max_pool2d(x, 2, 2, 0, layout="NHWC"))), (1, 20, 20, 24)),
}
LEFT = {
    "sum-last-axis": (lambda bb, x: relax.op.sum(x, axis=[2]), (1, 64, 128)),
    "matmul": (lambda bb, x: relax.op.matmul(x, relax.const(np.ones((128, 32), "float32"))), (1, 64, 128)),
    "odd-channels": (lambda bb, x: relax.op.nn.max_pool2d(x, 2, 2, 0, layout="NHWC"), (1, 20, 20, 3)),
}


def _fused(body, shape):
    mod = relax.transform.LegalizeOps()(relax_main(body, shape))
    return relax.transform.FuseTIR()(relax.transform.FuseOps()(relax.transform.AnnotateTIROpPattern()(mod)))


def _kernels(mod):
    return [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]


@pytest.mark.parametrize("case", list(TAKEN))
def test_channel_reductions_vectorize_channels_and_match(case):
    body, shape = TAKEN[case]
    _, target = resolve_preset(load_preset("host"))
    fused = _fused(body, shape)
    assert [channel_reduce_schedule(f, 16, 2) is not None for f in _kernels(fused)] == [True]
    scheduled, _ = apply_default_schedules(fused, target)
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    got = relax.VirtualMachine(tvm.compile(scheduled, target=target), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    plain = relax.transform.LegalizeOps()(relax_main(body, shape))  # unscheduled loops: the reference
    want = relax.VirtualMachine(tvm.compile(plain, target=target), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", list(LEFT))
def test_other_reductions_keep_the_generic_default(case):
    body, shape = LEFT[case]
    assert all(channel_reduce_schedule(f, 16, 2) is None for f in _kernels(_fused(body, shape)))
