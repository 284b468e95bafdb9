"""Importers: a model file in, a Relax IRModule with static input shapes out."""

from .model import ImportedModel
from .onnx import import_onnx

__all__ = ["ImportedModel", "import_onnx", "import_model"]


def import_model(path, input_shapes=None) -> ImportedModel:
    """Import a model file by its format (ONNX for now)."""
    return import_onnx(path, input_shapes=input_shapes)
