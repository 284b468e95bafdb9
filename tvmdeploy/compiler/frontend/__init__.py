"""Importers: a model in, a Relax IRModule with static input shapes out.

ONNX (.onnx), PyTorch (torch.nn.Module, torch.export.ExportedProgram, .pt2 from
torch.export.save) and TFLite (.tflite). torch and tflite are optional and imported only
for a model of their kind.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import ModelImportError
from .model import ImportedModel
from .onnx import import_onnx

__all__ = ["ImportedModel", "import_onnx", "import_model", "SUFFIXES"]

SUFFIXES = {".onnx": "ONNX", ".pt2": "PyTorch (torch.export.save)", ".tflite": "TFLite"}


def import_model(model, input_shapes=None, example_inputs=None) -> ImportedModel:
    """Import a model by its kind: a path (.onnx, .pt2, .tflite), a torch.nn.Module (with
    example_inputs) or a torch.export.ExportedProgram."""
    if not isinstance(model, (str, os.PathLike)):
        from .torch import import_torch, is_torch_model

        if is_torch_model(model):
            return import_torch(model, example_inputs=example_inputs, input_shapes=input_shapes)
        raise ModelImportError(
            f"cannot import a {type(model).__module__}.{type(model).__qualname__}: pass a model file path "
            f"({', '.join(SUFFIXES)}), a torch.nn.Module or a torch.export.ExportedProgram"
        )
    suffix = Path(model).suffix.lower()
    if example_inputs is not None and suffix != ".pt2":
        raise ModelImportError(f"{model}: example_inputs are for PyTorch modules; give input shapes with input_shapes")
    if suffix == ".pt2":
        from .torch import import_torch

        return import_torch(model, example_inputs=example_inputs, input_shapes=input_shapes)
    if suffix == ".tflite":
        from .tflite import import_tflite

        return import_tflite(model, input_shapes=input_shapes)
    return import_onnx(model, input_shapes=input_shapes)
