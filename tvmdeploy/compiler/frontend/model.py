"""What every importer hands to the rest of the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tvm

from ...errors import ModelImportError
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


def checked_override(where, name: str, given, declared: list | None, what: str = "model") -> tuple[int, ...]:
    """An --input-shape override checked against the declared shape (ints are fixed
    dimensions, anything else symbolic; None: no shape declared). A fixed 0 (an empty
    tensor) may be given as 0; every other dimension must be positive."""
    shape = tuple(int(x) for x in given)
    shown = f"[{', '.join(map(str, declared or []))}]"
    if declared is not None and len(shape) != len(declared):
        raise ModelImportError(
            f"{where}: --input-shape for '{name}' has {len(shape)} dimensions, the {what} declares {len(declared)}: {shown}"
        )
    for got, want in zip(shape, declared or [None] * len(shape)):
        if isinstance(want, int) and got != want:
            raise ModelImportError(
                f"{where}: --input-shape {name}={','.join(map(str, shape))} contradicts the {what}'s fixed shape {shown}"
            )
        if got < 0 or (got == 0 and want != 0):
            raise ModelImportError(f"{where}: --input-shape for '{name}' must be positive integers")
    return shape
