"""The artifact manifest: what was built, from what, for where, and the hash of every file.

Shared by the compiler and the thin loader, so it imports nothing but the standard
library (and never TVM).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
LIBRARY_NAME = "model.so"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str
    # An integer input that indexes a table (token ids): the values it may hold, [low, high).
    index_range: tuple[int, int] | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TensorSpec":
        index_range = d.get("index_range")
        return cls(
            name=d["name"], shape=tuple(int(x) for x in d["shape"]), dtype=d["dtype"],
            index_range=None if index_range is None else (int(index_range[0]), int(index_range[1])),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.index_range is None:
            del d["index_range"]  # the manifests of models without one stay as they were
        return d

    def describe(self) -> str:
        return f"{self.name}: {self.dtype}[{', '.join(map(str, self.shape))}]"


@dataclass
class Manifest:
    model_name: str
    source_file: str
    source_sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preset: str
    target: dict[str, Any]  # the resolved TVM target, as TVM exports it
    device: str  # "cpu" or "cuda"
    arch: str  # CPU architecture of the library ("x86_64", "aarch64")
    cpu_flags: list[str]  # /proc/cpuinfo flags the code may use
    threads: int  # default runtime thread count (0: one per core)
    library: str  # file name of the shared library inside the artifact
    weights: str  # where the weights travel: "embedded" in the library, or a file name (weights.npz)
    passes: list[str]  # every pass the compile ran, in order (the stage reports joined)
    versions: dict[str, str]  # tvm, tvm-ffi, tvmdeploy, onnx
    build_seconds: float
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # later stages' provenance
    compute_capability: str | None = None  # device "cuda": the oldest GPU it runs on ("8.0")

    def to_json(self) -> str:
        d = asdict(self)
        d["inputs"] = [spec.to_dict() for spec in self.inputs]
        d["outputs"] = [spec.to_dict() for spec in self.outputs]
        return json.dumps(d, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        d = dict(d)
        d["inputs"] = [TensorSpec.from_json(x) for x in d["inputs"]]
        d["outputs"] = [TensorSpec.from_json(x) for x in d["outputs"]]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
