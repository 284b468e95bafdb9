"""What every importer hands to the rest of the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tvm

from ...runtime.manifest import TensorSpec


@dataclass
class ImportedModel:
    name: str  # model name (file stem), used for the default artifact folder
    source: Path
    source_sha256: str
    mod: tvm.ir.IRModule  # Relax; weights bound as constants; "main" takes the inputs
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    import_passes: list[str] = field(default_factory=list)  # rewrites done before Relax
