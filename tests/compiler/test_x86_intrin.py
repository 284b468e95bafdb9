"""The AVX2 int8 dot-product tensor intrinsic (tvmdeploy.compiler.kernels.x86_intrin).

A packed int8 dense (A uint8 [M, K], W int8 [N/16, K/4, 16, 4], the layout TVM's VNNI and
AVX-512 intrinsics use) is tensorized by hand and through MetaSchedule, built for Haswell
(AVX2, no AVX-512) and compared with numpy bit for bit, including the int16 saturation that
makes weights outside [-64, 63] inexact.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import tvm
from tvm import te

from tvmdeploy.compiler import _tvm
from tvmdeploy.compiler.kernels import register_intrinsics
from tvmdeploy.compiler.kernels.x86_intrin import (
    AVX2_DOT_16x4_INTRIN,
    dot_product_16x4_u8i8i32_desc,
    int8_space_generator,
    register_x86_intrinsics,
)

M, K, N = 32, 64, 48
HASWELL = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


needs_avx2 = pytest.mark.skipif("avx2" not in _cpu_flags(), reason="runs AVX2 code: needs an x86-64 CPU with AVX2")


def packed_dense():
    A = te.placeholder((M, K), "uint8", name="A")
    W = te.placeholder((N // 16, K // 4, 16, 4), "int8", name="W")
    k = te.reduce_axis((0, K), name="k")
    C = te.compute(
        (M, N),
        lambda m, n: te.sum(
            A[m, k].astype("int32") * W[n // 16, k // 4, n % 16, k % 4].astype("int32"), axis=k
        ),
        name="C",
    )
    return te.create_prim_func([A, W, C])


def tensorized_by_hand() -> tvm.IRModule:
    register_x86_intrinsics()
    sch = tvm.s_tir.Schedule(packed_dense())
    block = sch.get_sblock("C")
    m, n, k = sch.get_loops(block)
    n_o, n_i = sch.split(n, [None, 16])
    k_o, k_i = sch.split(k, [None, 4])
    sch.reorder(m, n_o, k_o, n_i, k_i)
    sch.decompose_reduction(block, k_o)
    sch.tensorize(n_i, AVX2_DOT_16x4_INTRIN)
    return sch.mod


def inputs(rng, w_low: int, w_high: int, a_high: int = 255):
    a = rng.integers(0, a_high + 1, (M, K)).astype("uint8")
    w = rng.integers(w_low, w_high + 1, (N // 16, K // 4, 16, 4)).astype("int8")
    return a, w


def unpacked(w: np.ndarray) -> np.ndarray:
    """[N/16, K/4, 16, 4] -> [N, K]."""
    return w.transpose(0, 2, 1, 3).reshape(N, K)


def exact_dense(a, w) -> np.ndarray:
    return a.astype(np.int32) @ unpacked(w).astype(np.int32).T


def saturating_dense(a, w) -> np.ndarray:
    """What vpmaddubsw + vpmaddwd compute: adjacent-k pairs summed and clamped to int16."""
    prod = a.astype(np.int64)[:, None, :] * unpacked(w).astype(np.int64)[None, :, :]  # [M, N, K]
    pairs = np.clip(prod[..., 0::2] + prod[..., 1::2], -32768, 32767)
    return pairs.sum(axis=-1).astype(np.int32)


def run(lib, a, w) -> np.ndarray:
    dev = tvm.cpu()
    c = tvm.runtime.tensor(np.zeros((M, N), "int32"), dev)
    lib["main"](tvm.runtime.tensor(a, dev), tvm.runtime.tensor(w, dev), c)
    return c.numpy()


@pytest.fixture(scope="module")
def hand_lib():
    return tvm.compile(tensorized_by_hand(), target=tvm.target.Target(HASWELL)).mod


def test_register_is_idempotent():
    register_x86_intrinsics()
    register_x86_intrinsics()  # a second registration would raise "already registered"
    registered = _tvm.TensorIntrin.get(AVX2_DOT_16x4_INTRIN)
    # What is registered under our name is our 16x4 u8 x s8 -> s32 description.
    tvm.ir.assert_structural_equal(registered.desc, dot_product_16x4_u8i8i32_desc)


def test_tensorized_dense_uses_avx2_only(hand_lib):
    asm = hand_lib.inspect_source("asm")
    assert "vpmaddubsw" in asm and "vpmaddwd" in asm
    assert "zmm" not in asm  # no AVX-512 registers: runs on AVX2-only CPUs


@needs_avx2
def test_tensorized_dense_exact_within_contract(hand_lib):
    rng = np.random.default_rng(0)
    # Weights in [-64, 63]: every int16 pair sum fits, for all uint8 activations.
    a, w = inputs(rng, -64, 63)
    a[0, :] = 255  # the worst case of the contract: 2 * 255 * -64 = -32640
    w[0, :, 0, :] = -64
    np.testing.assert_array_equal(run(hand_lib, a, w), exact_dense(a, w))
    # Or the other way round: activations in [0, 127], all int8 weights.
    a, w = inputs(rng, -128, 127, a_high=127)
    np.testing.assert_array_equal(run(hand_lib, a, w), exact_dense(a, w))


@needs_avx2
def test_full_range_weights_differ_only_by_int16_saturation(hand_lib):
    rng = np.random.default_rng(1)
    a, w = inputs(rng, -127, 127)
    got = run(hand_lib, a, w)
    # Outside the contract the result is no longer the exact dense...
    assert not np.array_equal(got, exact_dense(a, w))
    # ...but exactly the saturating pair sum of vpmaddubsw, nothing else.
    np.testing.assert_array_equal(got, saturating_dense(a, w))


def _ms_target():
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return tvm.target.Target({**HASWELL, "num-cores": cores})


def test_space_generator_tensorizes_with_the_intrinsic():
    from tvm.s_tir import meta_schedule as ms

    register_intrinsics()  # before TuneContext imports all of TVM's (CUDA's ~30 s)
    context = ms.TuneContext(
        mod=tvm.IRModule({"main": packed_dense()}),
        target=_ms_target(),
        space_generator=int8_space_generator(AVX2_DOT_16x4_INTRIN),
        task_name="main",
        rand_state=0,
    )
    spaces = context.generate_design_space()
    assert spaces
    for space in spaces:
        assert f'ann_val="{AVX2_DOT_16x4_INTRIN}"' in str(space.trace)  # meta_schedule.auto_tensorize
        # The RewriteTensorize postproc turns the annotation into the tensorize instruction.
        sch = space.copy()
        assert all(postproc.apply(sch) for postproc in context.space_generator.postprocs)
        assert "sch.tensorize(block_or_loop=" in str(sch.trace)
        assert f'tensor_intrin="{AVX2_DOT_16x4_INTRIN}"' in str(sch.trace)


@needs_avx2
def test_short_tune_is_tensorized_and_exact(tmp_path):
    from tvm.s_tir import meta_schedule as ms

    register_intrinsics()
    # MetaSchedule re-lists the logger's existing handlers in its logging config; ones an
    # earlier tuning in this process left behind break it (as tvmdeploy's tuner does: start clean).
    import logging

    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    for handler in list(ms_logger.handlers):
        ms_logger.removeHandler(handler)
        handler.close()
    mod = tvm.IRModule({"main": packed_dense()})
    target = _ms_target()
    database = ms.tune_tir(
        mod,
        target,
        str(tmp_path),
        max_trials_global=8,
        num_trials_per_iter=8,
        # The candidates reach the builder already tensorized (the traces are applied in
        # this process), so its workers need no intrinsic registered: no initializer.
        builder=ms.builder.LocalBuilder(f_build=_tvm.metaschedule_build, max_workers=2, timeout_sec=60),
        runner=ms.runner.LocalRunner(
            timeout_sec=30,
            evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=0),
        ),
        cost_model="random",
        # A small population: the default (512, 4 genetic rounds) costs ~10 s for 8 trials.
        strategy=ms.search_strategy.EvolutionarySearch(
            population_size=32, init_min_unmeasured=16, genetic_num_iters=1
        ),
        space=int8_space_generator(AVX2_DOT_16x4_INTRIN),
        seed=0,
        num_tuning_cores=2,
    )
    measured = [r for r in database.get_all_tuning_records() if r.run_secs and float(r.run_secs[0]) < 1e9]
    assert measured, "no candidate built and ran"
    sch = database.query_schedule(mod, target, workload_name="main")
    assert f'tensor_intrin="{AVX2_DOT_16x4_INTRIN}"' in str(sch.trace)
    lib = tvm.compile(sch.mod, target=target).mod
    assert "vpmaddubsw" in lib.inspect_source("asm")
    a, w = inputs(np.random.default_rng(2), -64, 63)
    np.testing.assert_array_equal(run(lib, a, w), exact_dense(a, w))
