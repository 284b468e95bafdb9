"""SplitConvOverConcat: Before/Expected structural tests, what it leaves alone, and end to
end: SqueezeNet-style fire modules exported by torch.onnx.export (expand convs
concatenated, max-pooled, squeezed) with no concatenation kernel left, against ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MODELS, ort_run
from pass_helpers import verify_pass
from tvm import relax

from tvmdeploy import compile_model
from tvmdeploy.compiler.passes.split_conv_over_concat import SplitConvOverConcat
from tvmdeploy.runtime import load

rng = np.random.default_rng(0)
SHAPE = (1, 8, 8, 4)
W = rng.standard_normal((8, 1, 1, 12)).astype("float32")  # OHWI over 4 + 8 channels
WIDE = rng.standard_normal((16, 1, 1, 12)).astype("float32")  # more channels out than in
EXPAND = rng.standard_normal((8, 1, 1, 4)).astype("float32")  # the 8 channels


def _conv(x, weight, groups=1):
    return relax.op.nn.conv2d(x, relax.const(weight), groups=groups, data_layout="NHWC", kernel_layout="OHWI")


def _pool(x):
    return relax.op.nn.max_pool2d(x, (2, 2), strides=(2, 2), layout="NHWC")


def _module(body):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.nn.relu(x))
            b = bb.emit(_conv(x, EXPAND))
            out = bb.emit_output(body(bb, a, b))
        bb.emit_func_output(out)
    return bb.get()


def test_a_conv_of_a_concatenation_becomes_a_sum_of_convs():
    def before(bb, a, b):
        cat = bb.emit(relax.op.concat([a, b], axis=3))
        return _conv(cat, W)

    def expected(bb, a, b):
        return relax.op.add(_conv(a, W[..., :4].copy()), _conv(b, W[..., 4:].copy()))

    verify_pass(SplitConvOverConcat(), _module(before), _module(expected))


def test_pooling_moves_before_the_concatenation_then_the_conv_splits():
    def before(bb, a, b):
        cat = bb.emit(relax.op.concat([a, b], axis=3))
        pooled = bb.emit(_pool(cat))
        return _conv(pooled, W)

    def expected(bb, a, b):
        pa, pb = bb.emit(_pool(a)), bb.emit(_pool(b))
        return relax.op.add(_conv(pa, W[..., :4].copy()), _conv(pb, W[..., 4:].copy()))

    verify_pass(SplitConvOverConcat(), _module(before), _module(expected))


@pytest.mark.parametrize("case", ["concat-read-twice", "grouped-conv", "not-the-channel-axis", "output-wider-than-input"])
def test_concatenations_it_cannot_split_are_left_alone(case):
    def body(bb, a, b):
        if case == "not-the-channel-axis":  # two images side by side
            cat = bb.emit(relax.op.concat([a, bb.emit(relax.op.nn.relu(a))], axis=2))
            return _conv(cat, W[..., :4].copy())
        cat = bb.emit(relax.op.concat([a, b], axis=3))
        if case == "output-wider-than-input":  # SqueezeNet's classifier: 512 channels in, 1000 out
            return _conv(cat, WIDE)
        if case == "grouped-conv":
            return _conv(cat, rng.standard_normal((12, 1, 1, 4)).astype("float32"), groups=3)
        return relax.op.add(bb.emit(_conv(cat, W)), relax.op.sum(cat, axis=[3], keepdims=True))

    mod = _module(body)
    verify_pass(SplitConvOverConcat(), mod, mod)


def _export_fire_modules(path):
    import torch
    from torch import nn

    class Fire(nn.Module):
        def __init__(self, inplanes, squeeze, expand):
            super().__init__()
            self.squeeze = nn.Conv2d(inplanes, squeeze, 1)
            self.expand1x1 = nn.Conv2d(squeeze, expand, 1)
            self.expand3x3 = nn.Conv2d(squeeze, expand, 3, padding=1)

        def forward(self, x):
            x = torch.relu(self.squeeze(x))
            return torch.cat([torch.relu(self.expand1x1(x)), torch.relu(self.expand3x3(x))], 1)

    class Fires(nn.Module):
        """SqueezeNet 1.0's pattern: fire, fire, max-pool, fire, then a 1x1 classifier conv."""

        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 32, 3, stride=2)
            self.fires = nn.Sequential(Fire(32, 16, 32), Fire(64, 16, 32), nn.MaxPool2d(3, 2, ceil_mode=True),
                                       Fire(64, 24, 48))
            self.classifier = nn.Conv2d(96, 20, 1)

        def forward(self, x):
            x = self.fires(torch.relu(self.stem(x)))
            return torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(self.classifier(x)), 1), 1)

    torch.manual_seed(0)
    with torch.no_grad():
        torch.onnx.export(Fires().eval(), (torch.randn(1, 3, 48, 48),), str(path), input_names=["image"],
                          output_names=["logits"], opset_version=13, dynamo=False)


@pytest.mark.parametrize("source", ["fire-modules", "concat_block"])
def test_exports_with_concatenations_match_onnxruntime_without_concat_kernels(source, tmp_path):
    model = MODELS / "concat_block.onnx" if source == "concat_block" else tmp_path / "fires.onnx"
    if source == "fire-modules":
        _export_fire_modules(model)
    result = compile_model(model, "host", output_dir=tmp_path / "a", cache_dir=tmp_path / "c")
    assert "SplitConvOverConcat" in result.reports.lowering.passes
    shape = (1, 3, 48, 48) if source == "fire-modules" else (1, 3, 8, 8)
    x = rng.standard_normal(shape).astype("float32")
    (want,) = ort_run(model, {"image": x})
    (got,) = load(result.artifact_dir)(image=x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    if source == "fire-modules":
        names = _kernel_names(model)
        assert not any("concat" in name for name in names), names


def _kernel_names(model) -> list[str]:
    from tvmdeploy.compiler import _tvm
    from tvmdeploy.compiler.frontend import import_model
    from tvmdeploy.compiler.lowering import lower
    from tvmdeploy.compiler.optimize import optimize_graph
    from tvmdeploy.compiler.presets import load_preset, resolve_preset

    _, target = resolve_preset(load_preset("host"))
    fused, _ = lower(optimize_graph(import_model(model).mod)[0], target)
    return [gv.name_hint for gv, f in fused.functions_items() if isinstance(f, _tvm.PrimFunc)]
