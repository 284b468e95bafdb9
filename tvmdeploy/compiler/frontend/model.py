"""What every importer hands to the rest of the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tvm

from ...runtime.manifest import TensorSpec


@dataclass
class ImportedModel:
    name: str  # model name (file stem), used for the default artifact folder
    source: Path | str  # the model file, or a description of an in-memory model
    source_sha256: str
    mod: tvm.ir.IRModule  # Relax; weights bound as constants; "main" takes the inputs
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    import_passes: list[str] = field(default_factory=list)  # rewrites done before/while importing
    source_format: str = "onnx"  # "onnx", "pytorch" (torch.export), "tflite"
    frontend: str = "tvm.relax.frontend.onnx.from_onnx"  # the TVM importer that converted it
    versions: dict[str, str] = field(default_factory=dict)  # the framework's version ({"torch": "2.13.0"})
