"""PackDenseFp32: Before/Expected structural tests, what it leaves alone, the packed dense
kernel against numpy over its shapes (rows not a multiple of the tile, columns not whole
vectors, a single row, leading batch axes, one and two threads) on every CPU preset, and
end to end: a torch-exported transformer feed-forward block against ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from conftest import ort_run
from pass_helpers import relax_main, verify_pass
from tvm import relax

from tvmdeploy import compile_model
from tvmdeploy.compiler import _tvm
from tvmdeploy.compiler.kernels.fp32_packed import DENSE_BLOCK, dense_packed, lanes_for, pack_dense_weight
from tvmdeploy.compiler.kernels.fp32_schedule import packed_conv2d_schedule
from tvmdeploy.compiler.kernels.select import target_vector_shape
from tvmdeploy.compiler.passes.pack_dense import PackDenseFp32
from tvmdeploy.compiler.presets import load_preset, resolve_preset
from tvmdeploy.runtime import load

rng = np.random.default_rng(0)
SHAPE = (2, 5, 24)
W32 = rng.standard_normal((24, 32)).astype("float32")
W40 = rng.standard_normal((24, 40)).astype("float32")  # 40 columns: computed as 48


def _packed(bb, x, weight, out_shape):
    packed = pack_dense_weight(weight, 16)
    kernel = dense_packed(SHAPE, packed.shape)
    gv = bb.add_func(kernel, DENSE_BLOCK)
    bb.update_func(gv, kernel.with_attr("global_symbol", gv.name_hint))
    return relax.call_tir(gv, relax.Tuple([x, relax.const(packed)]), relax.TensorType(out_shape, "float32"))


def test_matmuls_by_constant_weights_become_packed_kernels():
    def before(bb, x):
        y = bb.emit(relax.op.matmul(x, relax.const(W32)))
        return relax.op.nn.gelu(y)

    def expected(bb, x):
        y = bb.emit(_packed(bb, x, W32, (2, 5, 32)))
        return relax.op.nn.gelu(y)

    verify_pass(PackDenseFp32(16), relax_main(before, SHAPE), relax_main(expected, SHAPE))


def test_columns_padded_to_whole_vectors_then_sliced_off():
    def before(bb, x):
        return relax.op.matmul(x, relax.const(W40))

    def expected(bb, x):
        padded = np.concatenate([W40, np.zeros((24, 8), np.float32)], axis=1)
        y = bb.emit(_packed(bb, x, padded, (2, 5, 48)))
        return relax.op.strided_slice(y, axes=[2], begin=[0], end=[40])

    verify_pass(PackDenseFp32(16), relax_main(before, SHAPE), relax_main(expected, SHAPE))


def test_the_packed_weight_is_the_transposed_weight_in_vector_blocks():
    packed = pack_dense_weight(W40[:, :32], 16)
    assert packed.shape == (2, 1, 1, 24, 16)
    for n in range(32):
        np.testing.assert_array_equal(packed[n // 16, 0, 0, :, n % 16], W40[:, n])


@pytest.mark.parametrize("case", ["two-activations", "weight-is-a-parameter", "float16", "vector-input"])
def test_matmuls_it_cannot_pack_are_left_alone(case):
    if case == "two-activations":  # attention's Q x K^T
        mod = relax_main(lambda bb, x: relax.op.matmul(x, relax.op.permute_dims(x, [0, 2, 1])), SHAPE)
    elif case == "float16":
        mod = relax_main(lambda bb, x: relax.op.matmul(x, relax.const(W32.astype("float16"))), SHAPE, "float16")
    elif case == "vector-input":
        mod = relax_main(lambda bb, x: relax.op.matmul(x, relax.const(W32)), (24,))
    else:
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
        w = relax.Var("w", relax.TensorType(W32.shape, "float32"))
        with bb.function("main", [x, w]):
            with bb.dataflow():
                out = bb.emit_output(relax.op.matmul(x, w))
            bb.emit_func_output(out)
        mod = bb.get()
    verify_pass(PackDenseFp32(16), mod, mod)


# x shape, columns N
DENSE_CASES = {
    "bert-like-rows": ((1, 96, 64), 96),
    "one-row-classifier": ((1, 200), 1000),
    "odd-rows-odd-columns": ((7, 33), 10),
    "batch-and-heads": ((2, 3, 5, 48), 48),
    "columns-padded": ((13, 20), 40),
}
PRESETS = ["host", "x86_64", "x86_64-avx2", "x86_64-avx512", "aarch64-cortex-a72"]


def _preset_target(name):
    return resolve_preset(load_preset(name))[1]


def _scheduled_dense(x_shape, columns, vector, threads):
    x = rng.standard_normal(x_shape).astype(np.float32)
    weight = rng.standard_normal((x_shape[-1], columns)).astype(np.float32)
    packed = pack_dense_weight(weight, lanes_for(columns, vector[0]))
    schedule = packed_conv2d_schedule(dense_packed(x.shape, packed.shape), vector, threads)
    assert schedule is not None, "the default schedule did not apply"
    return x, weight, packed, schedule.mod["main"]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", list(DENSE_CASES))
def test_packed_dense_matches_numpy(case, threads):
    target = _preset_target("host")
    x_shape, columns = DENSE_CASES[case]
    x, weight, packed, scheduled = _scheduled_dense(x_shape, columns, target_vector_shape(target), threads)
    text = scheduled.script()
    assert "T.vectorized" in text and ("T.parallel" in text) == (threads > 1)
    want = x.astype(np.float64) @ weight.astype(np.float64)
    lib = _tvm.compile_executable(tvm.ir.IRModule({"main": scheduled}), target)
    out = tvm.runtime.tensor(np.zeros(want.shape, np.float32))
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(packed), out)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("preset", PRESETS)
def test_the_default_dense_schedule_builds_for_every_cpu_preset(preset):
    target = _preset_target(preset)
    vector = target_vector_shape(target)
    *_, scheduled = _scheduled_dense((1, 64, 96), 192, vector, 2)
    assert f"T.Buffer((T.int64({192 // vector[0]}), T.int64(1), T.int64(1), T.int64(96), T.int64({vector[0]}))" in (
        scheduled.script()
    )
    _tvm.compile_executable(tvm.ir.IRModule({"main": scheduled}), target)


def _export_feed_forward(path):
    import torch
    from torch import nn

    class FeedForward(nn.Module):
        """A transformer block's FFN (3-D rows, bias, GELU, residual, LayerNorm) and a
        classifier on the first token (2-D rows: ONNX Gemm), 1000 classes."""

        def __init__(self):
            super().__init__()
            self.up, self.down = nn.Linear(64, 256), nn.Linear(256, 64)
            self.norm, self.head = nn.LayerNorm(64), nn.Linear(64, 1000)

        def forward(self, x):
            x = self.norm(x + self.down(nn.functional.gelu(self.up(x))))
            return self.head(x[:, 0])

    torch.manual_seed(0)
    model = FeedForward().eval()
    with torch.no_grad():
        torch.onnx.export(model, (torch.randn(2, 20, 64),), str(path), input_names=["tokens"],
                          output_names=["logits"], opset_version=17, dynamo=False)


def test_feed_forward_export_runs_packed_and_matches_onnxruntime(tmp_path):
    model = tmp_path / "ffn.onnx"
    _export_feed_forward(model)
    result = compile_model(model, "host", output_dir=tmp_path / "a", cache_dir=tmp_path / "c")
    lowering = result.reports.lowering
    assert lowering.packed_dense == 3 and "PackDenseFp32" in lowering.passes
    x = rng.standard_normal((2, 20, 64)).astype("float32")
    (want,) = ort_run(model, {"tokens": x})
    (got,) = load(result.artifact_dir)(tokens=x)
    assert got.shape == (2, 1000)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
