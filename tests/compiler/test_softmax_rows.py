"""The row softmax kernel (kernels/softmax_rows.py): numbers against numpy in float64 over
row lengths the vector divides, does not divide, and odd ones; its schedule is the default
and the tuning space; other axes keep TVM's softmax."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from pass_helpers import relax_main
from tvm import relax

from tvmdeploy.compiler.kernels.select import space_for_kernel
from tvmdeploy.compiler.kernels.rows import row_lanes
from tvmdeploy.compiler.passes.fast_math import FastMath
from tvmdeploy.compiler.presets import load_preset, resolve_preset
from tvmdeploy.compiler.tuning.default_schedule import apply_default_schedules


def _scheduled(shape, axis=-1, preset="host"):
    _, target = resolve_preset(load_preset(preset))
    mod = relax.transform.LegalizeOps()(FastMath()(relax_main(lambda bb, x: relax.op.nn.softmax(x, axis), shape)))
    scheduled, _ = apply_default_schedules(mod, target)
    return mod, scheduled, target


def _kernels(mod):
    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


@pytest.mark.parametrize("shape", [(1, 12, 128, 128), (1, 1000), (3, 7), (5,), (4, 24), (2, 40, 36)])
def test_matches_numpy(shape):
    _, scheduled, target = _scheduled(shape)
    assert list(_kernels(scheduled)) == ["softmax_rows"]
    x = (np.random.default_rng(0).standard_normal(shape) * 6).astype(np.float32)
    x.reshape(-1)[0] = 80.0  # a large logit: the max shift keeps exp in range
    got = relax.VirtualMachine(tvm.compile(scheduled, target=target), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    x64 = x.astype(np.float64)
    want = np.exp(x64 - x64.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)


def test_attention_softmax_gets_the_row_schedule():
    before, scheduled, target = _scheduled((1, 12, 128, 128))
    text = _kernels(scheduled)["softmax_rows"].script()
    # Vector partial maxima and sums (rfactor), rows in parallel, the exp computed once.
    assert "softmax_rows_max_rf" in text and "softmax_rows_sum_rf" in text
    assert "T.parallel" in text and text.count("T.vectorized(T.int64(16))") >= 2
    assert text.count('T.sblock("T_fast_exp")') == 1
    # The tuning space is the same schedule (tuning cannot replace it by a generic sample).
    assert space_for_kernel(_kernels(before)["softmax_rows"], target) is not None
    assert not isinstance(space_for_kernel(_kernels(before)["softmax_rows"], target), str)


@pytest.mark.parametrize("shape", [(1, 4, 16, 16), (3, 8), (2, 32)])
def test_rows_of_one_or_two_vectors_get_the_row_schedule(shape):
    """A row of one vector (16 on AVX-512) left the partial reduction an extent-1 loop and
    the kernel unscheduled; such rows take two half-width vectors."""
    _, scheduled, target = _scheduled(shape)
    text = _kernels(scheduled)["softmax_rows"].script()
    assert "softmax_rows_sum_rf" in text and "T.vectorized" in text
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    got = relax.VirtualMachine(tvm.compile(scheduled, target=target), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    want = np.exp(x - x.max(-1, keepdims=True))
    np.testing.assert_allclose(got, want / want.sum(-1, keepdims=True), rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("length, lanes, want", [(128, 16, 16), (1000, 16, 8), (7, 16, 1), (24, 8, 8), (36, 4, 4)])
def test_row_lanes(length, lanes, want):
    assert row_lanes(length, lanes) == want


def test_other_axes_keep_tvms_softmax():
    _, scheduled, _ = _scheduled((2, 6, 4), axis=1)
    assert "softmax_rows" not in _kernels(scheduled)
