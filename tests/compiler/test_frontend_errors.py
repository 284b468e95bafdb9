"""Bad PyTorch / TFLite inputs: each one line on the CLI (exit 1), naming the file, the op
or node, and the fix; nothing slow runs first."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from conftest import MODELS

from tvmdeploy.cli.main import main
from tvmdeploy.compiler.frontend import import_model
from tvmdeploy.errors import ModelImportError


def one_line_error(capsys, *argv) -> str:
    code = main([str(a) for a in argv])
    _, err = capsys.readouterr()
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tvmdeploy: error: "), err
    return lines[0]


# ---- PyTorch


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def test_pt2_that_is_not_an_exported_program(torch, tmp_path, capsys):
    weights = tmp_path / "weights.pt2"
    torch.save(torch.nn.Linear(4, 2).state_dict(), weights)  # torch.save, not torch.export.save
    line = one_line_error(capsys, "compile", weights, "-o", tmp_path / "a")
    assert "weights.pt2: not a torch.export program" in line and "torch.export.save(" in line
    garbage = tmp_path / "garbage.pt2"
    garbage.write_bytes(b"\x00not a zip" * 10)
    line = one_line_error(capsys, "compile", garbage, "-o", tmp_path / "b")
    assert "garbage.pt2: not a torch.export program" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


class _Unsupported:
    """A model using two ATen ops TVM's importer lacks (erfinv, cummax) between supported ones."""

    @staticmethod
    def make(torch):
        class Model(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(8, 8)

            def forward(self, x):
                y = torch.erfinv(torch.tanh(self.fc(x)) * 0.5)
                return torch.cummax(y, dim=1)[0].relu()

        return Model().eval(), (torch.randn(2, 8),)


def test_unsupported_aten_ops_are_listed_at_once(torch, tmp_path, capsys):
    module, inputs = _Unsupported.make(torch)
    with pytest.raises(ModelImportError) as info:
        import_model(module, example_inputs=inputs)
    message = str(info.value)
    assert "2 node(s) use ATen operators TVM's PyTorch importer does not support" in message
    assert "aten.erfinv.default (node 'erfinv')" in message and "aten.cummax.default (node 'cummax')" in message
    path = tmp_path / "unsupported.pt2"
    torch.export.save(torch.export.export(module, inputs), path)
    line = one_line_error(capsys, "compile", path, "-o", tmp_path / "a")
    assert "unsupported.pt2: 2 node(s)" in line and "(aten.cummax.default, aten.erfinv.default)" in line


def test_program_exported_in_training_mode(torch):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).train()
    program = torch.export.export(model, (torch.randn(2, 3, 8, 8),))
    with pytest.raises(ModelImportError, match=r"updates buffers \(1.num_batches_tracked, 1.running_mean, 1.running_var\): it was exported in training mode"):
        import_model(program)


def test_export_failure_names_torchs_own_reason(torch):
    """torch's message leads with what failed and ends with hints and the user's stack;
    the one line keeps the reason, not the last hint."""

    class DataDependentBranch(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x - 1

    with pytest.raises(ModelImportError) as info:
        import_model(DataDependentBranch(), example_inputs=(torch.randn(2, 3),))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("DataDependentBranch: torch.export.export failed (")
    assert "data-dependent expression" in message


def test_module_without_example_inputs(torch):
    with pytest.raises(ModelImportError, match=r"Linear: compiling a torch.nn.Module needs example_inputs"):
        import_model(torch.nn.Linear(4, 2))


def test_input_shape_for_an_unknown_torch_input(torch, tmp_path, capsys):
    path = tmp_path / "mlp.pt2"
    torch.export.save(torch.export.export(torch.nn.Linear(4, 2).eval(), (torch.randn(1, 4),)), path)
    line = one_line_error(capsys, "compile", path, "--input-shape", "y=1,4", "-o", tmp_path / "a")
    assert "'y', which is not an input of the program (inputs: input)" in line


# ---- TFLite

FLEX = MODELS / "keras_flex_op.tflite"


@pytest.fixture(scope="module")
def tflite():
    return pytest.importorskip("tflite")


def test_tflite_with_an_unsupported_op(tflite, tmp_path, capsys):
    line = one_line_error(capsys, "compile", FLEX, "-o", tmp_path / "a")
    assert "keras_flex_op.tflite: 1 operator(s) TVM's TFLite importer does not support (CUSTOM:FlexMatrixDeterminant)" in line
    assert "operator #" in line and "SELECT_TF_OPS" in line


@pytest.mark.parametrize("damage", ["truncated", "identifier", "garbage", "empty"])
def test_corrupt_tflite(tflite, tmp_path, capsys, damage):
    data = (MODELS / "keras_cnn_float.tflite").read_bytes()
    bad = {
        "truncated": data[: len(data) // 3],
        "identifier": data[:4] + b"XXXX" + data[8:],
        "garbage": bytes(range(256)) * 4,
        "empty": b"",
    }[damage]
    path = tmp_path / "model.tflite"
    path.write_bytes(bad)
    line = one_line_error(capsys, "compile", path, "-o", tmp_path / "a")
    expected = {
        "truncated": "model.tflite: a corrupt or truncated TFLite file",
        "identifier": "model.tflite: not a TFLite model (no TFL3 flatbuffer identifier)",
        "garbage": "model.tflite: not a TFLite model",
        "empty": "model.tflite: the file is empty",
    }[damage]
    assert expected in line


# ---- optional frameworks missing (hidden from a fresh interpreter)


def _cli_without(module: str, *argv) -> subprocess.CompletedProcess:
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules[{module!r}] = None  # `import {module}` now raises ImportError
        from tvmdeploy.cli.main import main
        sys.exit(main({[str(a) for a in argv]!r}))
        """
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_torch_not_installed(torch, tmp_path):
    path = tmp_path / "mlp.pt2"
    torch.export.save(torch.export.export(torch.nn.Linear(4, 2).eval(), (torch.randn(1, 4),)), path)
    proc = _cli_without("torch", "compile", path, "-o", tmp_path / "a")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "mlp.pt2: PyTorch is not installed" in lines[0], proc.stderr
    assert "pip install 'tvmdeploy[torch]'" in lines[0]


def test_tflite_not_installed(tmp_path):
    proc = _cli_without("tflite", "compile", MODELS / "keras_cnn_float.tflite", "-o", tmp_path / "a")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "keras_cnn_float.tflite: the tflite package is not installed" in lines[0], proc.stderr
    assert "pip install 'tvmdeploy[tflite]'" in lines[0]
