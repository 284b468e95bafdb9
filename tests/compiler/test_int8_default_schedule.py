"""The analytic untuned default of the packed int8 kernels (tuning/analytic_int8.py).

For each preset with an int8 dot-product instruction: the default replays the tensorizing
design space with the register tile the target's registers allow, is tensorized with the
target's intrinsic, builds, and (where this CPU runs it) computes what numpy computes, bit
for bit. A kernel the analytic tile cannot take still gets the first sample that builds.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from test_int8_kernels import _conv_reference, _cpu_flags, _run

from tvmdeploy.compiler import _tvm
from tvmdeploy.compiler.kernels import int8_packed as kp
from tvmdeploy.compiler.kernels import register_intrinsics
from tvmdeploy.compiler.kernels.select import packed_int8_for
from tvmdeploy.compiler.presets import load_preset, resolve_preset
from tvmdeploy.compiler.tuning import analytic_int8
from tvmdeploy.compiler.tuning import default_schedule as ds
from tvmdeploy.compiler.tuning.analytic_int8 import (
    accumulator_registers,
    int8_default_schedule,
    int8_tile,
)

rng = np.random.default_rng(0)
PRESETS = ["x86_64-avx2", "x86_64-avx512", "host", "aarch64-cortex-a76"]
# /proc/cpuinfo flags a preset's int8 instruction needs to run here.
RUNS_WITH = {"x86_64-avx2": {"avx2"}, "x86_64-avx512": {"avx512bw", "avx512_vnni"}, "host": set()}

CONV = {  # input NHWC, output channels, kernel, stride, padding (odd sizes: tiles of 1..3 columns)
    "3x3 pad 1": ((1, 9, 11, 20), 32, 3, 1, (1, 1, 1, 1)),
    "1x1 stride 2": ((1, 13, 7, 24), 48, 1, 2, (0, 0, 0, 0)),
}


def _target(preset: str):
    target = resolve_preset(load_preset(preset))[1]
    if packed_int8_for(target) is None:
        pytest.skip(f"{preset}: no int8 dot-product instruction")
    register_intrinsics(target.kind.name)
    return target


def _runs_here(preset: str, target) -> bool:
    spec = packed_int8_for(target)
    return spec.lanes == 16 and RUNS_WITH[preset] <= _cpu_flags() if preset in RUNS_WITH else False


def _conv(target, case):
    shape, oc, k, stride, pad = CONV[case]
    spec = packed_int8_for(target)
    wmax = spec.weight_max
    w = rng.integers(-wmax, wmax + 1, (oc, k, k, shape[3])).astype(np.int8)
    x = rng.integers(0, 256, shape).astype(np.uint8) if spec.activation == "uint8" else rng.integers(-128, 128, shape).astype(np.int8)
    packed = kp.pack_conv2d_weight(w, spec.lanes)
    prim = kp.conv2d_nhwc_packed(shape, packed.shape, (stride, stride), pad, (1, 1), activation=spec.activation)
    return prim, (x, packed), lambda: _conv_reference(x, w, stride, pad, 1)


def _dense(target):
    spec = packed_int8_for(target)
    x = rng.integers(0, 256, (3, 30)).astype(np.uint8) if spec.activation == "uint8" else rng.integers(-128, 128, (3, 30)).astype(np.int8)
    w = rng.integers(-spec.weight_max, spec.weight_max + 1, (30, 64)).astype(np.int8)
    packed = kp.pack_dense_weight(w, spec.lanes)
    return kp.dense_packed(x.shape, packed.shape, activation=spec.activation), (x, packed), lambda: x.astype(np.int64) @ w.astype(np.int64)


def _kernel(target, case):
    return _dense(target) if case == "dense" else _conv(target, case)


def _cores(target) -> int:
    return int(target.attrs.get("num-cores", 1))


@pytest.mark.parametrize("case", [*CONV, "dense"])
@pytest.mark.parametrize("preset", PRESETS)
def test_analytic_default_is_tensorized_register_blocked_and_exact(preset, case):
    target = _target(preset)
    prim, inputs, reference = _kernel(target, case)
    schedule = int8_default_schedule(prim, target, _cores(target))
    assert schedule is not None, "no analytic default"
    trace = str(schedule.trace)
    assert f'tensor_intrin="{packed_int8_for(target).intrinsic}"' in trace
    assert "enter_postproc" in trace  # the postprocessors ran on the replayed sample
    # The tile is the rule's: RW output columns (S3) x V channel vectors (S2).
    (group,) = _tvm.tiled_blocks(schedule.trace, tensorized_only=True)
    spatial = [(inst, extent) for inst, extent, n in group if n == 4]  # ..., output columns, channel blocks
    (column_loop, width), (block_loop, blocks) = spatial[-2], spatial[-1]
    columns, vectors = int8_tile(width, blocks, accumulator_registers(target))
    decision = lambda inst: [int(d) for d in schedule.trace.decisions[inst]]
    assert decision(block_loop) == [blocks // vectors, 1, vectors, 1]
    assert decision(column_loop) == [width // columns, 1, 1, columns]
    # The default schedule of a compile is this one.
    chosen = ds._first_design_space_sample(prim, target, _cores(target), 1)
    tvm.ir.assert_structural_equal(chosen.mod["main"], schedule.mod["main"])
    executable = tvm.compile(schedule.mod, target=target)
    if _runs_here(preset, target):
        expected = reference()
        assert np.array_equal(_run(executable, *inputs, out_shape=expected.shape), expected)


def test_accumulator_budget_follows_the_target_registers():
    """Half the vector registers, counted in 16-lane (x86) / 4-lane (ARM) int32 accumulators."""
    budget = {p: accumulator_registers(resolve_preset(load_preset(p))[1]) for p in ("x86_64-avx2", "x86_64-avx512", "aarch64-cortex-a76")}
    assert budget == {"x86_64-avx2": 4, "x86_64-avx512": 16, "aarch64-cortex-a76": 16}
    # RW x V + V <= 16 (as measured: 14-16 accumulators, not the fp32 rule's 28).
    assert int8_tile(28, 8, 16) == (7, 2)
    assert int8_tile(56, 4, 16) == (7, 2)
    assert int8_tile(7, 32, 16) == (7, 2)
    assert int8_tile(1, 4, 16) == (1, 4)  # a dense row: vectors only
    assert int8_tile(13, 3, 16) == (13, 1)  # a prime width, an odd channel-block count
    assert int8_tile(28, 8, 4) == (2, 1)


def test_a_tile_the_kernel_cannot_take_falls_back_to_the_first_sample_that_builds(monkeypatch):
    """A register tile that does not divide the output width: the replay fails, and the
    kernel still gets a working default (the first design-space sample that builds)."""
    target = _target("host")
    prim, inputs, reference = _conv(target, "3x3 pad 1")
    monkeypatch.setattr(analytic_int8, "int8_tile", lambda width, blocks, accumulators: (width + 1, 1))
    assert int8_default_schedule(prim, target, _cores(target)) is None
    mod, count = ds.apply_default_schedules(tvm.IRModule({"main": prim}), target)
    assert count == 1
    executable = tvm.compile(mod, target=target)
    if _runs_here("host", target):
        expected = reference()
        assert np.array_equal(_run(executable, *inputs, out_shape=expected.shape), expected)
