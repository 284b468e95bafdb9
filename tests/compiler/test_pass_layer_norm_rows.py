"""LayerNormRows: Before/Expected, what it leaves alone, numbers against float64 numpy
(rows with a large mean included), and the row schedule it gets on CPUs."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from pass_helpers import relax_main, verify_pass
from tvm import relax

from tvmdeploy.compiler.kernels.layer_norm_rows import layer_norm_rows
from tvmdeploy.compiler.lowering import lower
from tvmdeploy.compiler.passes.layer_norm_rows import LayerNormRows
from tvmdeploy.compiler.presets import load_preset, resolve_preset
from tvmdeploy.compiler.tuning.default_schedule import apply_default_schedules

rng = np.random.default_rng(0)


def _ln(x, n, axes=(-1,), center=True, scale=True, dtype="float32"):
    gamma = relax.const(rng.standard_normal(n).astype(dtype))
    beta = relax.const(rng.standard_normal(n).astype(dtype))
    return relax.op.nn.layer_norm(x, gamma, beta, axes=list(axes), epsilon=1e-5, center=center, scale=scale), gamma, beta


def test_last_axis_layer_norm_becomes_the_row_kernel():
    made = {}

    def before(bb, x):
        call, made["gamma"], made["beta"] = _ln(x, 24)
        return call

    def expected(bb, x):
        return bb.call_te(layer_norm_rows, x, made["gamma"], made["beta"], 1e-5, primfunc_name_hint="layer_norm_rows")

    mod = relax_main(before, (2, 5, 24))
    verify_pass(LayerNormRows(), mod, relax_main(expected, (2, 5, 24)))


@pytest.mark.parametrize("case", ["middle-axis", "no-scale", "float16"])
def test_other_layer_norms_are_left_alone(case):
    if case == "middle-axis":
        mod = relax_main(lambda bb, x: _ln(x, 5, axes=(1,))[0], (2, 5, 24))
    elif case == "no-scale":
        mod = relax_main(lambda bb, x: _ln(x, 24, scale=False)[0], (2, 5, 24))
    else:
        mod = relax_main(lambda bb, x: _ln(x, 24, dtype="float16")[0], (2, 5, 24), "float16")
    verify_pass(LayerNormRows(), mod, mod)


@pytest.mark.parametrize("shape", [(1, 128, 768), (4, 7), (10, 24), (3,), (6, 16), (3, 8)])
def test_matches_numpy_and_gets_the_row_schedule(shape):
    _, target = resolve_preset(load_preset("host"))
    n = shape[-1]
    gamma, beta = rng.standard_normal(n).astype("float32"), rng.standard_normal(n).astype("float32")
    mod = relax_main(
        lambda bb, x: relax.op.nn.layer_norm(x, relax.const(gamma), relax.const(beta), axes=[-1], epsilon=1e-5), shape
    )
    lowered, report = lower(mod, target)
    assert "LayerNormRows" in report.passes
    scheduled, _ = apply_default_schedules(lowered, target)
    (kernel,) = [f for f in scheduled.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    if n % 4 == 0:  # vector partial sums
        assert "layer_norm_rows_sum_rf" in kernel.script() and "layer_norm_rows_sqsum_rf" in kernel.script()
    x = (rng.standard_normal(shape) * 3 + 50).astype("float32")  # a large mean: two passes keep it exact
    got = relax.VirtualMachine(tvm.compile(scheduled, target=target), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    x64 = x.astype(np.float64)
    want = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5) * gamma + beta
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=5e-5)
