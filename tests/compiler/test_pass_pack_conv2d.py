"""PackConv2dFp32: Before/Expected structural tests, what it leaves alone, and end to end
(the NHWC packed graph against ONNX Runtime on a MobileNet/ShuffleNet-style export)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from conftest import MODELS, ort_run
from pass_helpers import relax_main, verify_pass
from tvm import relax

from tvmdeploy import compile_model
from tvmdeploy.compiler.kernels.fp32_packed import (
    CONV_BLOCK,
    conv2d_nhwc_packed,
    pack_conv2d_weight,
    pad_conv2d_weight,
    padded_channels,
)
from tvmdeploy.compiler.presets import load_preset, resolve_preset
from tvmdeploy.compiler.passes.pack_conv2d import PackConv2dFp32
from tvmdeploy.runtime import load

rng = np.random.default_rng(0)
W = rng.standard_normal((32, 3, 3, 8)).astype("float32")  # OHWI
DW = rng.standard_normal((8, 3, 3, 1)).astype("float32")  # depthwise OHWI
SHAPE = (1, 10, 10, 8)


def _nhwc_conv(x, weight, groups=1, strides=(1, 1)):
    return relax.op.nn.conv2d(
        x, relax.const(weight), strides=strides, padding=(1, 1), groups=groups, data_layout="NHWC", kernel_layout="OHWI"
    )


def _packed(bb, x, weight, groups, lanes, out_shape, strides=(1, 1)):
    packed = pack_conv2d_weight(weight, lanes)
    kernel = conv2d_nhwc_packed(SHAPE, packed.shape, weight.shape[0], groups, strides, (1, 1, 1, 1), (1, 1))
    gv = bb.add_func(kernel, CONV_BLOCK)
    bb.update_func(gv, kernel.with_attr("global_symbol", gv.name_hint))
    return relax.call_tir(gv, relax.Tuple([x, relax.const(packed)]), relax.TensorType(out_shape, "float32"))


def _module(body, builder=None):
    bb = builder or relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(body(bb, x))
        bb.emit_func_output(out)
    return bb.get()


def test_regular_and_depthwise_convs_become_packed_kernels():
    def before(bb, x):
        y = bb.emit(_nhwc_conv(x, DW, groups=8))
        y = bb.emit(relax.op.nn.relu(y))
        return _nhwc_conv(y, W, strides=(2, 2))

    def expected(bb, x):
        y = bb.emit(_packed(bb, x, DW, 8, 8, (1, 10, 10, 8)))
        y = bb.emit(relax.op.nn.relu(y))
        return _packed(bb, y, W, 1, 16, (1, 5, 5, 32), strides=(2, 2))

    verify_pass(PackConv2dFp32(16), _module(before), _module(expected))


NCHW_SHAPE = (1, 8, 10, 10)


def _nchw_module(body):
    return relax_main(lambda bb, x: body(bb, x, bb.emit(relax.op.permute_dims(x, [0, 2, 3, 1]))), NCHW_SHAPE)


def test_a_conv_of_the_transposed_nchw_input_reads_the_input_itself():
    """What ConvertLayout leaves at an NCHW graph input: the transpose kernel goes."""

    def before(bb, x, nhwc):
        return _nhwc_conv(nhwc, W)

    def expected(bb, x, nhwc):
        packed = pack_conv2d_weight(W, 16)
        kernel = conv2d_nhwc_packed(NCHW_SHAPE, packed.shape, 32, 1, (1, 1), (1, 1, 1, 1), (1, 1), nchw_input=True)
        gv = bb.add_func(kernel, CONV_BLOCK)
        bb.update_func(gv, kernel.with_attr("global_symbol", gv.name_hint))
        return relax.call_tir(gv, relax.Tuple([x, relax.const(packed)]), relax.TensorType((1, 10, 10, 32), "float32"))

    expected_mod = relax_main(lambda bb, x: expected(bb, x, None), NCHW_SHAPE)
    verify_pass(PackConv2dFp32(16), _nchw_module(before), expected_mod)


@pytest.mark.parametrize("case", ["depthwise", "transpose-read-elsewhere"])
def test_the_transpose_stays_where_something_else_needs_it(case):
    def body(bb, x, nhwc):
        if case == "depthwise":  # its input vectors are loaded, not broadcast: kept NHWC
            return _nhwc_conv(nhwc, DW, groups=8)
        y = bb.emit(_nhwc_conv(nhwc, W))
        return relax.op.add(y, relax.op.sum(nhwc, axis=[3], keepdims=True))

    after = PackConv2dFp32(16)(_nchw_module(body))
    assert relax.analysis.well_formed(after) is not False
    assert "permute_dims" in after["main"].script()


@pytest.mark.parametrize("case", ["transposed-only", "transpose-read-elsewhere"])
def test_transposed_input_convs_compute_the_same_numbers(case):
    def body(bb, x, nhwc):
        y = bb.emit(relax.op.nn.relu(bb.emit(_nhwc_conv(nhwc, W24))))
        return y if case == "transposed-only" else relax.op.add(y, relax.op.sum(nhwc, axis=[3], keepdims=True))

    _, target = resolve_preset(load_preset("host"))
    mod = _nchw_module(body)
    x = rng.standard_normal(NCHW_SHAPE).astype("float32")
    outs = []
    for m in (mod, PackConv2dFp32(16)(mod)):
        vm = relax.VirtualMachine(tvm.compile(m, target=target), tvm.cpu())
        outs.append(vm["main"](tvm.runtime.tensor(x)).numpy())
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-4, atol=1e-4)


W24 = rng.standard_normal((24, 3, 3, 8)).astype("float32")  # 24 channels: computed as 32
G28 = rng.standard_normal((56, 3, 3, 4)).astype("float32")  # 2 groups of 28: computed as 2 x 32


def test_channels_padded_to_whole_vectors_then_sliced_off():
    def before(bb, x):
        y = bb.emit(_nhwc_conv(x, W24))
        return _nhwc_conv(x, G28, groups=2)

    def expected(bb, x):
        y = bb.emit(_packed(bb, x, pad_conv2d_weight(W24, 1, 32), 1, 16, (1, 10, 10, 32)))
        y = bb.emit(relax.op.strided_slice(y, axes=[3], begin=[0], end=[24]))
        z = bb.emit(_packed(bb, x, pad_conv2d_weight(G28, 2, 32), 2, 16, (1, 10, 10, 64)))
        kept = np.array([*range(28), *range(32, 60)], dtype="int32")
        return relax.op.take(z, relax.const(kept), axis=3, mode="clip")

    verify_pass(PackConv2dFp32(16), _module(before), _module(expected))


@pytest.mark.parametrize("per_group, lanes, computed", [(1000, 16, 1008), (34, 16, 48), (24, 16, 32), (17, 16, 17),
                                                        (20, 16, 20), (28, 8, 32), (1, 16, 1), (64, 16, 64)])
def test_padding_only_where_it_adds_at_most_half_the_work(per_group, lanes, computed):
    assert padded_channels(per_group * 2, 2, lanes) == computed


@pytest.mark.parametrize("channels, lanes, computed", [(1000, 16, 1024), (1000, 8, 1008), (272, 16, 288), (48, 16, 48),
                                                       (40, 16, 48), (100, 16, 112), (64, 16, 64), (16, 16, 16)])
def test_an_odd_vector_count_becomes_even_where_that_adds_little(channels, lanes, computed):
    """Ungrouped convs only: a 2-vector register tile needs an even vector count."""
    assert padded_channels(channels, 1, lanes) == computed


@pytest.mark.parametrize("weight, groups", [(W24, 1), (G28, 2)], ids=["24-channels", "2x28-grouped"])
def test_padded_kernels_compute_the_same_numbers(weight, groups):
    _, target = resolve_preset(load_preset("host"))
    mod = _module(lambda bb, x: relax.op.nn.relu(bb.emit(_nhwc_conv(x, weight, groups=groups))))
    x = rng.standard_normal(SHAPE).astype("float32")
    outs = []
    for m in (mod, PackConv2dFp32(16)(mod)):
        vm = relax.VirtualMachine(tvm.compile(m, target=target), tvm.cpu())
        outs.append(vm["main"](tvm.runtime.tensor(x)).numpy())
    assert outs[1].shape == (1, 10, 10, weight.shape[0])
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-4, atol=1e-4)


def test_avx2_lanes_pack_by_eight():
    after = PackConv2dFp32(8)(_module(lambda bb, x: _nhwc_conv(x, W)))
    consts = [c for c in _constants(after) if c.ndim == 5]
    assert [c.shape for c in consts] == [(4, 3, 3, 8, 8)]
    np.testing.assert_array_equal(consts[0], pack_conv2d_weight(W, 8))


@pytest.mark.parametrize("case", ["nchw", "weight-is-a-parameter", "float16"])
def test_convs_it_cannot_pack_are_left_alone(case):
    if case == "nchw":
        mod = relax_main(lambda bb, x: relax.op.nn.conv2d(x, relax.const(W.transpose(0, 3, 1, 2).copy()), padding=(1, 1)), (1, 8, 10, 10))
    elif case == "float16":
        mod = relax_main(lambda bb, x: _nhwc_conv(x, W.astype("float16")), SHAPE, "float16")
    else:
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
        w = relax.Var("w", relax.TensorType(W.shape, "float32"))
        with bb.function("main", [x, w]):
            with bb.dataflow():
                out = bb.emit_output(relax.op.nn.conv2d(x, w, padding=(1, 1), data_layout="NHWC", kernel_layout="OHWI"))
            bb.emit_func_output(out)
        mod = bb.get()
    verify_pass(PackConv2dFp32(16), mod, mod)


def _constants(mod):
    found = []
    relax.analysis.post_order_visit(
        mod["main"].body, lambda e: found.append(e.value.numpy()) if isinstance(e, tvm.ir.GenericConst) else None
    )
    return found


def test_mobile_block_runs_packed_and_matches_onnxruntime(tmp_path):
    """Depthwise, grouped (17 channels per group), dilated, strided convs, ReLU6 and a
    channel shuffle, from a torch.onnx.export at opset 13."""
    model = MODELS / "mobile_block.onnx"
    result = compile_model(model, "host", output_dir=tmp_path / "a", cache_dir=tmp_path / "c")
    lowering = result.reports.lowering
    assert lowering.packed_conv2d == 6 and "PackConv2dFp32" in lowering.passes
    x = np.random.default_rng(1).standard_normal((1, 3, 30, 30)).astype("float32")
    (want,) = ort_run(model, {"image": x})
    (got,) = load(result.artifact_dir)(image=x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
