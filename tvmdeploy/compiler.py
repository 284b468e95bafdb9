"""The pipeline, top to bottom: import -> optimize -> build -> package.

`compile_model` is the typed Python API behind `tvmdeploy compile`; the CLI only parses
arguments into it. Later stages (pruning, quantization, tuning) slot in as numbered
steps here.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .artifact import finalize, staging_folder
from .build import build_library, library_file_name
from .frontend import import_model
from .manifest import Manifest
from .optimize import BUILD_PASSES, optimize_graph
from .presets import load_preset, resolve_preset

DEFAULT_ARTIFACTS_DIR = Path("artifacts")


@dataclass(frozen=True)
class CompileResult:
    artifact_dir: Path
    manifest: Manifest


def compile_model(
    model: str | os.PathLike,
    target: str = "host",
    output_dir: str | os.PathLike | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
) -> CompileResult:
    """Compile an ONNX model for a target preset into an artifact folder.

    model: path to an .onnx file. target: a preset name (`tvmdeploy targets`) or a path
    to a preset .toml. output_dir: the artifact folder (default
    artifacts/<model>-<preset>). input_shapes: {input name: shape} for inputs whose
    shape the model leaves symbolic.
    """
    started = time.perf_counter()
    from . import _tvm

    # 1. Resolve and validate the target preset (cheap failures first).
    preset, tvm_target = resolve_preset(load_preset(target))

    # 2. Import: ONNX -> Relax with static input shapes, weights bound as constants.
    imported = import_model(model, input_shapes=input_shapes)

    # 3. Optimize the graph: fold constants and BatchNorm, simplify.
    mod, graph_passes = optimize_graph(imported.mod)

    destination = Path(output_dir) if output_dir else DEFAULT_ARTIFACTS_DIR / f"{imported.name}-{preset.name}"
    with staging_folder(destination) as staging:
        # 4. Build: tvm.compile (legalize, fuse, codegen) and export the shared library.
        library = library_file_name(preset)
        build_library(mod, tvm_target, preset, staging / library)

        # 5. Package: manifest with provenance and file hashes, then rename into place.
        manifest = Manifest(
            model_name=imported.name,
            source_file=str(imported.source),
            source_sha256=imported.source_sha256,
            inputs=imported.inputs,
            outputs=imported.outputs,
            preset=preset.name,
            target=_tvm.target_to_dict(tvm_target),
            device=preset.device,
            arch=preset.arch,
            cpu_flags=_tvm.required_cpu_flags(tvm_target),
            threads=preset.build.threads,
            library=library,
            weights="embedded",
            passes=[*imported.import_passes, *graph_passes, *BUILD_PASSES],
            versions=_versions(),
            build_seconds=round(time.perf_counter() - started, 3),
        )
        manifest = finalize(staging, destination, manifest)
    return CompileResult(artifact_dir=destination, manifest=manifest)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import onnx

    from . import _tvm

    found = {"tvmdeploy": __version__, "tvm": _tvm.TVM_VERSION, "onnx": onnx.__version__}
    try:
        found["tvm-ffi"] = version("apache-tvm-ffi")
    except PackageNotFoundError:  # pragma: no cover - a source build of TVM
        pass
    return found
