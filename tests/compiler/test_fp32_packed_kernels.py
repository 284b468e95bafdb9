"""Packed fp32 conv kernels (kernels/fp32_packed.py) with their default schedule
(kernels/fp32_schedule.py): numbers against a float64 numpy convolution over padding,
stride, dilation, groups (depthwise), 1x1, channel counts that are no multiple of the
vector, batch > 1, one and two threads; and the register tile they choose."""

from __future__ import annotations

import numpy as np
import pytest

from tvmdeploy.compiler import _tvm
from tvmdeploy.compiler._tvm import tvm
from tvmdeploy.compiler.kernels.fp32_packed import conv2d_nhwc_packed, conv_lanes, pack_conv2d_weight
from tvmdeploy.compiler.kernels.fp32_schedule import packed_conv2d_schedule, register_tile
from tvmdeploy.compiler.kernels.select import vector_shape
from tvmdeploy.compiler.presets import load_preset, resolve_preset


def conv2d_reference(x_nhwc, w_ohwi, strides, padding, dilation, groups):
    """Direct float64 convolution, NHWC x OHWI -> NHWC."""
    pt, pl, pb, pr = padding
    x = np.pad(x_nhwc.astype(np.float64), [(0, 0), (pt, pb), (pl, pr), (0, 0)])
    n, h, w, _ = x.shape
    oc, kh, kw, icg = w_ohwi.shape
    ocg = oc // groups
    sh, sw = strides
    dh, dw = dilation
    oh = (h - dh * (kh - 1) - 1) // sh + 1
    ow = (w - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, oh, ow, oc))
    for g in range(groups):
        xs = x[..., g * icg:(g + 1) * icg]
        ws = w_ohwi[g * ocg:(g + 1) * ocg].astype(np.float64)
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw, :]
                out[..., g * ocg:(g + 1) * ocg] += patch @ ws[:, i, j, :].T
    return out


# (batch, height, width, in channels, out channels, kernel, stride, padding [t, l, b, r], dilation, groups)
CASES = {
    "3x3": (1, 12, 12, 32, 64, 3, 1, (1, 1, 1, 1), 1, 1),
    "1x1": (1, 9, 9, 24, 48, 1, 1, (0, 0, 0, 0), 1, 1),
    "odd-channels-batch2-stride2": (2, 13, 11, 7, 29, 3, 2, (1, 1, 1, 1), 1, 1),
    "dilation2": (1, 10, 10, 16, 16, 3, 1, (2, 2, 2, 2), 2, 1),
    "asymmetric-padding-5x5": (1, 11, 11, 8, 40, 5, 2, (0, 1, 2, 1), 1, 1),
    "depthwise": (1, 14, 14, 48, 48, 3, 1, (1, 1, 1, 1), 1, 48),
    "depthwise-odd-stride2": (1, 15, 15, 30, 30, 3, 2, (1, 1, 1, 1), 1, 30),
    "grouped-17-per-group": (1, 7, 7, 16, 68, 1, 1, (0, 0, 0, 0), 1, 4),
    "first-layer-3-channels": (1, 32, 32, 3, 16, 7, 2, (3, 3, 3, 3), 1, 1),
    "padded-copy-over-1mib": (1, 128, 128, 16, 16, 3, 1, (1, 1, 1, 1), 1, 1),
}


@pytest.fixture(scope="module")
def host():
    _, target = resolve_preset(load_preset("host"))
    return target, vector_shape(_tvm.cpu_features(target), str(target.attrs.get("mtriple", "")))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", list(CASES))
def test_packed_conv2d_matches_numpy(case, threads, host):
    target, vector = host
    n, h, w, ic, oc, k, s, pad, d, groups = CASES[case]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, h, w, ic)).astype(np.float32)
    weight = rng.standard_normal((oc, k, k, ic // groups)).astype(np.float32)
    packed = pack_conv2d_weight(weight, conv_lanes(oc, groups, vector[0]))
    func = conv2d_nhwc_packed(x.shape, packed.shape, oc, groups, (s, s), pad, (d, d))
    schedule = packed_conv2d_schedule(func, vector, threads)
    assert schedule is not None, "the default schedule did not apply"
    scheduled = schedule.mod["main"]
    text = scheduled.script()
    assert "T.vectorized" in text and ("T.parallel" in text) == (threads > 1)
    want = conv2d_reference(x, weight, (s, s), pad, (d, d), groups)
    lib = _tvm.compile_executable(tvm.ir.IRModule({"main": scheduled}), target)
    out = tvm.runtime.tensor(np.zeros(want.shape, np.float32))
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(packed), out)
    # float32 sums of up to k*k*ic/groups products of unit normals: error ~ sqrt(terms) * eps
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-4 * np.sqrt(k * k * ic / groups))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", ["first-layer-3-channels", "1x1", "odd-channels-batch2-stride2"])
def test_nchw_input_is_read_transposed(case, threads, host):
    """nchw_input: the kernel takes the NCHW tensor a graph input is (padded: the transpose
    runs in the padding pass; unpadded: in the conv's loads) and computes the same conv."""
    target, vector = host
    n, h, w, ic, oc, k, s, pad, d, groups = CASES[case]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, ic, h, w)).astype(np.float32)
    weight = rng.standard_normal((oc, k, k, ic)).astype(np.float32)
    packed = pack_conv2d_weight(weight, conv_lanes(oc, 1, vector[0]))
    func = conv2d_nhwc_packed(x.shape, packed.shape, oc, 1, (s, s), pad, (d, d), nchw_input=True)
    schedule = packed_conv2d_schedule(func, vector, threads)
    assert schedule is not None, "the default schedule did not apply"
    text = schedule.mod["main"].script()
    assert ("T.parallel" in text) == (threads > 1)
    want = conv2d_reference(x.transpose(0, 2, 3, 1), weight, (s, s), pad, (d, d), 1)
    lib = _tvm.compile_executable(schedule.mod, target)
    out = tvm.runtime.tensor(np.zeros(want.shape, np.float32))
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(packed), out)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-4 * np.sqrt(k * k * ic))


def _depthwise_kernel(vector, channels=192, size=28):
    weight = np.random.default_rng(1).standard_normal((channels, 3, 3, 1)).astype(np.float32)
    packed = pack_conv2d_weight(weight, conv_lanes(channels, channels, vector[0]))
    func = conv2d_nhwc_packed((1, size, size, channels), packed.shape, channels, channels, (1, 1), (1, 1, 1, 1), (1, 1))
    return packed_conv2d_schedule(func, vector, 2).mod, weight, packed


def test_register_tile_is_built_on_the_stack(host):
    # TVM's pipeline gives the "local" register tile a heap workspace per parallel task, and
    # behind a depthwise conv's bounds checks LLVM then stores every accumulator back after
    # each multiply-add; ours keeps it an alloca (registers). Same numbers either way.
    target, vector = host
    mod, weight, packed = _depthwise_kernel(vector)
    ours = _tvm.compile_executable(mod, target)
    theirs = tvm.compile(mod, target=target)
    assert "TVMBackendAllocWorkspace" in theirs.mod.inspect_source("s")
    assert "TVMBackendAllocWorkspace" not in ours.mod.inspect_source("s")
    x = np.random.default_rng(0).standard_normal((1, 28, 28, 192)).astype(np.float32)
    outs = []
    for lib in (ours, theirs):
        out = tvm.runtime.tensor(np.zeros((1, 28, 28, 192), np.float32))
        lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(packed), out)
        outs.append(out.numpy())
    np.testing.assert_array_equal(outs[0], outs[1])
    want = conv2d_reference(x, weight, (1, 1), (1, 1, 1, 1), (1, 1), 192)
    np.testing.assert_allclose(outs[0], want, rtol=1e-4, atol=1e-4 * 3)


def test_only_small_local_buffers_move_to_the_stack():
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def scratch(a: T.Buffer((4096,), "float32"), b: T.Buffer((4096,), "float32")):
        # a 16 KiB local buffer: past STACK_TILE_BYTES, it keeps TVM's heap workspace
        big = T.sblock_alloc_buffer((4096,), scope="local")
        for i in range(4096):
            with T.sblock("copy"):
                v = T.axis.remap("S", [i])
                big[v] = a[v] * T.float32(2)
        for i in range(4096):
            with T.sblock("out"):
                v = T.axis.remap("S", [i])
                b[v] = big[v] + T.float32(1)

    _, target = resolve_preset(load_preset("host"))
    lib = _tvm.compile_executable(tvm.ir.IRModule({"main": scratch}), target)
    assert "TVMBackendAllocWorkspace" in lib.mod.inspect_source("s")
    a = np.arange(4096, dtype=np.float32)
    b = tvm.runtime.tensor(np.zeros(4096, np.float32))
    lib["main"](tvm.runtime.tensor(a), b)
    np.testing.assert_array_equal(b.numpy(), a * 2 + 1)


def test_register_tile_fills_the_registers_without_running_past_edges():
    # AVX-512 (32 registers): 14 columns x 2 vectors = 28 accumulators + 2 weights + 1 broadcast
    assert register_tile(56, 4, 32) == (14, 2)
    assert register_tile(7, 32, 32) == (7, 2)  # ResNet's last stage: 7 divides the width
    assert register_tile(7, 1, 16) == (7, 1)  # AVX2, one vector of channels
    for width, blocks, registers in [(112, 6, 32), (13, 5, 16), (28, 17, 32), (1, 1, 16)]:
        rw, v = register_tile(width, blocks, registers)
        assert width % rw == 0 and blocks % v == 0 and rw * v + v + 1 <= registers


def test_register_tile_keeps_a_tiles_input_pixels_out_of_one_cache_set():
    from tvmdeploy.compiler.kernels.fp32_schedule import L1_WAYS, columns_per_cache_set

    # 1024 input channels: pixels 4 KiB apart all share one L1 set -> at most L1_WAYS columns
    assert register_tile(14, 16, 32, column_bytes=1024 * 4) == (7, 2)
    assert register_tile(16, 16, 32, column_bytes=1024 * 4) in ((8, 2), (4, 4))
    # stride 2 over 512 channels is the same 4 KiB apart
    assert register_tile(14, 64, 32, column_bytes=2 * 512 * 4) == (7, 2)
    # 256 channels (1 KiB apart) cycle through 4 sets: 14 columns are 4 to a set, allowed
    assert register_tile(14, 16, 32, column_bytes=256 * 4) == (14, 2)
    assert columns_per_cache_set(14, 1024 * 4) == 14 and columns_per_cache_set(14, 2048 * 4) == 14
    assert columns_per_cache_set(14, 1000 * 4) == 1 and columns_per_cache_set(14, 0) == 1
    assert columns_per_cache_set(L1_WAYS, 4096) == L1_WAYS


def test_default_tile_reads_the_column_stride_off_the_kernel(host):
    from tvmdeploy.compiler import _tvm
    from tvmdeploy.compiler.kernels.fp32_schedule import column_bytes, find_conv_block

    target, vector = host
    for (h, ic, k, s, pad), want in [
        ((14, 1024, 1, 1, (0, 0, 0, 0)), 1024 * 4),
        ((28, 512, 1, 2, (0, 0, 0, 0)), 2 * 512 * 4),
        ((56, 64, 3, 1, (1, 1, 1, 1)), 64 * 4),
        ((56, 128, 3, 2, (1, 1, 1, 1)), 2 * 128 * 4),
        ((224, 3, 7, 2, (3, 3, 3, 3)), 2 * 3 * 4),
    ]:
        packed_shape = (2, k, k, ic, 16)
        func = conv2d_nhwc_packed((1, h, h, ic), packed_shape, 32, 1, (s, s), pad, (1, 1))
        sch = _tvm.Schedule(tvm.ir.IRModule({"main": func}))
        assert column_bytes(sch, find_conv_block(sch)[1]) == want, (h, ic, k, s)


def test_depthwise_default_tile_uses_half_the_registers():
    from tvmdeploy.compiler.kernels.fp32_schedule import kernel_default_tile

    def tile(size, channels, groups, registers):
        packed_shape = pack_conv2d_weight(np.zeros((channels, 3, 3, channels // groups), np.float32), conv_lanes(channels, groups, 16)).shape
        func = conv2d_nhwc_packed((1, size, size, channels), packed_shape, channels, groups, (1, 1), (1, 1, 1, 1), (1, 1))
        return kernel_default_tile(_tvm.Schedule(tvm.ir.IRModule({"main": func})), (16, registers))

    # AVX-512: a 3x3 conv over channels fills the 32 registers (14 x 2 = 28 accumulators);
    # the same shape depthwise keeps 14 x 1 (14 accumulators + 1 weight <= 16)
    assert (tile(28, 192, 1, 32).columns, tile(28, 192, 1, 32).vectors) == (14, 2)
    assert (tile(28, 192, 192, 32).columns, tile(28, 192, 192, 32).vectors) == (14, 1)
    assert (tile(112, 32, 32, 32).columns, tile(112, 32, 32, 32).vectors) == (14, 1)
    assert (tile(7, 960, 960, 32).columns, tile(7, 960, 960, 32).vectors) == (7, 1)


def test_weight_packing_is_the_layout_the_kernel_reads():
    w = np.arange(32 * 3 * 3 * 8, dtype=np.float32).reshape(32, 3, 3, 8)
    packed = pack_conv2d_weight(w, 16)
    assert packed.shape == (2, 3, 3, 8, 16)
    oc, kh, kw, ic = 21, 2, 1, 5
    assert packed[oc // 16, kh, kw, ic, oc % 16] == w[oc, kh, kw, ic]
    assert conv_lanes(68, 4, 16) == 1 and conv_lanes(272, 4, 16) == 4 and conv_lanes(96, 96, 16) == 16 and conv_lanes(29, 1, 16) == 1


@pytest.mark.parametrize("size, parallel_pad", [(12, False), (128, True)])
def test_padding_runs_in_parallel_only_when_the_copy_is_big(size, parallel_pad, host):
    """A parallel padding pass wakes the pool's sleeping workers once more per conv; a
    small padded copy (under PARALLEL_PAD_BYTES) is made by the calling thread."""
    from tvmdeploy.compiler.kernels.fp32_schedule import PARALLEL_PAD_BYTES

    target, vector = host
    assert ((size + 2) ** 2 * 16 * 4 >= PARALLEL_PAD_BYTES) == parallel_pad
    packed_shape = pack_conv2d_weight(np.zeros((16, 3, 3, 16), np.float32), conv_lanes(16, 1, vector[0])).shape
    func = conv2d_nhwc_packed((1, size, size, 16), packed_shape, 16, 1, (1, 1), (1, 1, 1, 1), (1, 1))
    text = packed_conv2d_schedule(func, vector, 2).mod["main"].script()
    root_parallel = [line for line in text.splitlines() if line.startswith("    for ") and "T.parallel" in line]
    assert len(root_parallel) == (2 if parallel_pad else 1), root_parallel
