"""PyTorch models (defined here) through torch.export -> tvmdeploy, against torch eager.

Compiled from the nn.Module (Python API) and from a .pt2 written by torch.export.save
(CLI); outputs within 1e-4 of eager PyTorch. Pruning, int8, low-rank and clustering on the torch path measure
the same output SQNR (within 1 dB) as on the model's ONNX export.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from tvmdeploy import compile_model, load  # noqa: E402
from tvmdeploy.cli.main import main  # noqa: E402
from tvmdeploy.compiler.compression import Clustering, LowRank  # noqa: E402
from tvmdeploy.compiler.pruning import StructuredPruning  # noqa: E402
from tvmdeploy.compiler.quantization import Int8Static  # noqa: E402


class ConvBnRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
        )
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


class ResidualBlock(nn.Module):
    def __init__(self, channels=8):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 64), nn.GELU(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 5))

    def forward(self, x):
        return self.net(x)


class EncoderBlock(nn.Module):
    """nn.TransformerEncoderLayer with an additive attention mask as a second input."""

    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)

    def forward(self, x, mask):
        return self.layer(x, src_mask=mask)


def _randomize_bn(module: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BatchNorm statistics (fresh ones are an identity that hides folding bugs)."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return module.eval()


def _causal_mask(seq: int) -> torch.Tensor:
    return torch.triu(torch.full((seq, seq), float("-inf")), diagonal=1)


def make(name: str):
    """(module in eval mode, example inputs)"""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if name == "conv_bn_relu":
        return _randomize_bn(ConvBnRelu(), 2), (torch.randn(1, 3, 16, 16, generator=g),)
    if name == "residual_block":
        return _randomize_bn(ResidualBlock(), 3), (torch.randn(1, 8, 12, 12, generator=g),)
    if name == "mlp":
        return Mlp().eval(), (torch.randn(4, 20, generator=g),)
    if name == "encoder_block":
        return EncoderBlock().eval(), (torch.randn(2, 8, 32, generator=g), _causal_mask(8))
    raise KeyError(name)


def eager(module, inputs) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(*inputs)
    return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]


def assert_close(outputs, references):
    assert len(outputs) == len(references)
    for out, ref in zip(outputs, references):
        assert out.shape == ref.shape and out.dtype == ref.dtype
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())))


@pytest.mark.parametrize("name", ["conv_bn_relu", "residual_block", "mlp", "encoder_block"])
def test_module_matches_eager(name, tmp_path):
    module, inputs = make(name)
    result = compile_model(module, "host", output_dir=tmp_path / name, example_inputs=inputs)
    m = result.manifest
    assert m.extra["import"]["format"] == "pytorch"
    assert m.extra["import"]["frontend"] == "tvm.relax.frontend.torch.from_exported_program"
    assert m.versions["torch"] == torch.__version__.split("+")[0]
    if name in ("conv_bn_relu", "residual_block"):
        assert "FoldBatchnormToConv2D" in m.passes  # weights are constants: BatchNorm folds
    model = load(result.artifact_dir)
    assert_close(model(*[t.numpy() for t in inputs]), eager(module, inputs))


@pytest.mark.parametrize("name", ["conv_bn_relu", "residual_block", "mlp", "encoder_block"])
def test_saved_pt2_through_the_cli_matches_eager(name, tmp_path, capsys):
    module, inputs = make(name)
    path = tmp_path / f"{name}.pt2"
    torch.export.save(torch.export.export(module, inputs), path)
    code = main(["compile", str(path), "-o", str(tmp_path / "art")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"import:  PyTorch (torch {torch.__version__.split('+')[0]}) by tvm.relax.frontend.torch.from_exported_program" in out
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["extra"]["import"]["format"] == "pytorch"
    assert manifest["source_file"] == str(path.resolve())
    model = load(tmp_path / "art")
    assert_close(model(*[t.numpy() for t in inputs]), eager(module, inputs))


def test_dynamic_batch_needs_and_takes_input_shape(tmp_path, capsys):
    module, inputs = make("conv_bn_relu")
    batch = torch.export.Dim("batch", max=64)
    program = torch.export.export(module, (torch.randn(2, 3, 16, 16),), dynamic_shapes={"x": {0: batch}})
    path = tmp_path / "dynamic.pt2"
    torch.export.save(program, path)

    code = main(["compile", str(path), "-o", str(tmp_path / "no")])
    _, err = capsys.readouterr()
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "'x' has dynamic dimension(s)" in err and "--input-shape x=1,3,16,16" in err

    code = main(["compile", str(path), "-o", str(tmp_path / "art"), "--input-shape", "x=3,3,16,16"])
    out, err = capsys.readouterr()
    assert code == 0, err
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    model = load(tmp_path / "art")
    assert model.inputs[0].shape == (3, 3, 16, 16)
    assert_close(model(x.numpy()), eager(module, (x,)))

    code = main(["compile", str(path), "-o", str(tmp_path / "big"), "--input-shape", "x=100,3,16,16"])
    _, err = capsys.readouterr()
    assert code == 1 and "must lie in [" in err and len(err.strip().splitlines()) == 1, err


def _calibration(tmp_path, name, shape, n=16):
    path = tmp_path / f"{name}-calibration.npz"
    np.savez(path, x=np.random.default_rng(7).standard_normal((n, *shape[1:])).astype(np.float32))
    return path


@pytest.mark.parametrize("what", ["prune", "int8", "lowrank", "cluster"])
def test_pruning_and_int8_match_the_onnx_export(what, tmp_path):
    """The same model through torch.export and through torch.onnx.export: the same graph
    after import, so pruning / int8 / low-rank / clustering cost the same output SQNR."""
    module, inputs = make("conv_bn_relu")
    onnx_path = tmp_path / "conv_bn_relu.onnx"
    torch.onnx.export(module, inputs, onnx_path, input_names=["x"], dynamo=False)
    calibration = _calibration(tmp_path, "cbr", tuple(inputs[0].shape))
    options = dict(calibration_data=calibration)
    key = "size_accuracy"
    if what == "prune":
        options["prune"] = StructuredPruning(ratio=0.5)
    elif what == "int8":
        options["quantize"] = Int8Static()
    elif what == "lowrank":
        options["compress"] = [LowRank(rank_ratio=0.5)]
    else:
        options["compress"] = [Clustering(bits=3)]
    from_torch = compile_model(module, "host", output_dir=tmp_path / "t", example_inputs=inputs, **options).manifest
    from_onnx = compile_model(onnx_path, "host", output_dir=tmp_path / "o", **options).manifest
    t_sqnr = from_torch.extra[key]["rows"][-1]["output_sqnr_db"][0]
    o_sqnr = from_onnx.extra[key]["rows"][-1]["output_sqnr_db"][0]
    assert t_sqnr is not None and o_sqnr is not None
    assert abs(t_sqnr - o_sqnr) <= 1.0, (t_sqnr, o_sqnr)
    assert t_sqnr < 60  # something was really pruned / quantized
    if what in ("prune", "lowrank"):
        assert from_torch.extra[key]["rows"][-1]["macs"] < from_torch.extra[key]["rows"][0]["macs"]
    # and the artifact computes what the report measured: close to eager at that SQNR
    model = load(tmp_path / "t")
    got, ref = model(inputs[0].numpy())[0], eager(module, inputs)[0]
    noise = np.sum((got - ref) ** 2)
    assert 10 * np.log10(np.sum(ref**2) / max(noise, 1e-30)) > 10
