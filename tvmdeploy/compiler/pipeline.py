"""The pipeline, top to bottom: import -> optimize -> lower -> tune -> build -> package.

`compile_model` and `tune_model` are the typed Python API behind `tvmdeploy compile` and
`tvmdeploy tune`; the CLI only parses arguments into them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from .artifact import check_destination, finalize, staging_folder
from .build import build_library, build_pass_names, library_file_name
from ..errors import RemoteError, TvmDeployError, raise_if_interrupted
from .frontend import import_model
from ..runtime.manifest import Manifest
from .analysis.gather_indices import index_ranges
from .lowering import lower
from .optimize import optimize_graph
from .presets import load_preset, resolve_preset
from .reports import (
    BuildReport,
    CompressionReport,
    GraphReport,
    ImportReport,
    LoweringReport,
    PassLog,
    PruningReport,
    QuantizationReport,
    ScheduleReport,
    SizeAccuracyTable,
    passes_run,
)
from .shrink import shrink_graph
from .tuning.progress import Progress
from ..runtime.weights_file import WEIGHTS_FILE, write_weights

if TYPE_CHECKING:
    import torch
    import tvm

    from .compression import CompressionConfig
    from .pruning import PruningConfig
    from .quantization import QuantizationConfig
    from .tuning.tuner import TuningBudget

DEFAULT_ARTIFACTS_DIR = Path("artifacts")


@dataclass(frozen=True)
class CompileResult:
    artifact_dir: Path
    manifest: Manifest
    reports: "CompileReports"  # what each stage did (the manifest's provenance, typed)


def compile_model(
    model: "str | os.PathLike | torch.nn.Module | torch.export.ExportedProgram",
    target: str = "host",
    output_dir: str | os.PathLike | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    tune: "TuningBudget | None" = None,
    cache_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    prune: "PruningConfig | None" = None,
    quantize: "QuantizationConfig | None" = None,
    calibration_data: str | os.PathLike | None = None,
    sign_key: str | os.PathLike | None = None,
    example_inputs=None,
    compress: "list[CompressionConfig] | tuple" = (),
    max_accuracy_drop: float | None = None,
) -> CompileResult:
    """Compile a model for a target preset into an artifact folder.

    model: path to an .onnx, .pt2 (torch.export.save) or .tflite file, or a torch.nn.Module
    (exported in eval mode on example_inputs, a tensor or tuple of tensors) or a
    torch.export.ExportedProgram. target: a preset name (`tvmdeploy targets`) or a path
    to a preset .toml. output_dir: the artifact folder (default
    artifacts/<model>-<preset>). input_shapes: {input name: shape} for inputs whose
    shape the model leaves symbolic. tune: a TuningBudget to tune the kernels the
    tuning cache does not cover yet (None: only reuse what the cache has). cache_dir:
    the tuning cache root (default: $TVMDEPLOY_CACHE_DIR or ~/.cache/tvmdeploy).
    prune: a StructuredPruning / MagnitudePruning config. compress: LowRank / Clustering
    configs. quantize: an Int8WeightOnly / Int8Static config. They apply in the order
    prune -> low-rank -> cluster -> quantize (shrink.py). calibration_data: an .npz with
    one array per input (first axis: samples) and optional labels, on which they measure
    their accuracy cost (and int8 calibrates its activation scales). max_accuracy_drop:
    one budget, in top-1 points, spent across all of them by one sensitivity search
    (a config's own max_accuracy_drop does the same). sign_key: an Ed25519 private key (`tvmdeploy keygen`)
    to sign the manifest with (manifest.sig, written before the artifact appears).
    """
    started = time.perf_counter()
    from . import _tvm
    from .tuning.cache import TargetCache

    # 1. Resolve and validate the target preset (cheap failures first).
    preset, tvm_target = resolve_preset(load_preset(target))
    signer = None
    if sign_key is not None:  # a bad key fails before the slow stages
        from .signing import load_signer

        signer = load_signer(sign_key)
    target_dict = _tvm.target_to_dict(tvm_target)
    if output_dir:
        check_destination(Path(output_dir))  # never ours to replace: say so before the slow part

    # 2. Import: ONNX, PyTorch or TFLite -> Relax with static input shapes, weights as constants.
    imported = import_model(model, input_shapes=input_shapes, example_inputs=example_inputs)
    reports = CompileReports(imported=_import_report(imported))

    # 3. Note the inputs that index a table (the loader checks their values); optimize
    #    the graph: fold constants and BatchNorm, simplify.
    imported = with_index_ranges(imported)
    mod, reports.graph = optimize_graph(imported.mod)

    # 4. Prune, compress and quantize (if asked), in that order. Structured pruning
    #    removes channels; low-rank splits layers into thinner pairs; magnitude pruning
    #    and clustering change weight values, which then travel compactly beside the
    #    library; int8 rewrites conv/matmul to int8 weights (and int8 compute).
    shrunk = shrink_graph(
        mod, imported.inputs, prune, quantize, calibration_data, preset.device, progress, tvm_target,
        compress=compress, max_accuracy_drop=max_accuracy_drop,
    )
    mod, reports.pruning, reports.quantization = shrunk.mod, shrunk.pruning, shrunk.quantization
    reports.compression, reports.size_accuracy = shrunk.compression, shrunk.table

    # 5. Lower to fused kernels: the units that are tuned, cached and built.
    fused, reports.lowering = lower(mod, tvm_target)

    # 6. Schedule: tune what the cache does not cover (if asked), apply the cache's
    #    records, and give every kernel still without one a default schedule.
    cache = TargetCache.open(target_dict, _tvm.TVM_VERSION, cache_dir)
    scheduled, reports.schedule = schedule_kernels(fused, tvm_target, preset, cache, tune, progress)
    raise_if_interrupted()  # one a kernel's schedule fallback swallowed would leave it unscheduled

    destination = Path(output_dir) if output_dir else DEFAULT_ARTIFACTS_DIR / f"{imported.name}-{preset.name}"
    with staging_folder(destination) as staging:
        # 7. Build: tvm.compile (codegen) and export the shared library (+ compact weights).
        library = library_file_name(preset)
        thread_pool = build_library(scheduled, tvm_target, preset, staging / library)
        if shrunk.weights is not None:
            write_weights(staging / WEIGHTS_FILE, shrunk.weights)
        reports.build = BuildReport(
            passes=build_pass_names(),
            library=library, weights="embedded" if shrunk.weights is None else WEIGHTS_FILE, thread_pool=thread_pool
        )
        if reports.schedule.tuning is not None:
            reports.build.measured_ms = _measured_ms(staging / library, preset, imported.inputs, shrunk.weights)

        # 8. Package: manifest with provenance and file hashes, then rename into place.
        raise_if_interrupted()
        manifest = _manifest(imported, preset, tvm_target, reports, time.perf_counter() - started)
        manifest = finalize(staging, destination, manifest, signer=signer)
    return CompileResult(artifact_dir=destination, manifest=manifest, reports=reports)


def schedule_kernels(fused, tvm_target, preset, cache, tune=None, progress=None):
    """Tuned records from the cache (after tuning, if asked), else default schedules."""
    from .lowering import fold_weight_layouts
    from .passes.residual_in_place import accumulate_in_place
    from .tuning.default_schedule import apply_default_schedules
    from .tuning.tuner import apply_cached
    from .tuning.tuner import tune as tune_kernels

    tuning = None
    if tune is not None:
        from .tuning.remote import require_local_measurement

        require_local_measurement(preset)  # cross presets tune with `tvmdeploy tune --tracker`
        tuning = tune_kernels(fused, tvm_target, cache, tune, progress)
    ran = PassLog()
    scheduled, from_cache = apply_cached(fused, tvm_target, cache, ran)
    # Every CPU kernel still without a schedule gets MetaSchedule's first design-space
    # sample (tiled, parallel, vectorized) instead of naive loops; every GPU kernel
    # dlight's default GPU schedule.
    scheduled, default = apply_default_schedules(scheduled, tvm_target, ran=ran)
    # Weight repacking that the schedules asked for (RewriteLayout), done at compile time.
    scheduled = fold_weight_layouts(scheduled, tvm_target, ran)
    # A kernel adding a tensor read there for the last time (a residual) writes its output over it (CPU).
    if tvm_target.kind.name == "llvm":
        scheduled = ran.run(accumulate_in_place, scheduled)
    report = ScheduleReport(
        passes=list(ran), kernels_from_cache=from_cache, kernels_default=default,
        cache_folder=str(cache.folder), tuning=tuning,
    )
    return scheduled, report


def with_index_ranges(imported):
    """The imported model with the value range of each integer input that indexes a table
    (read off the graph as imported: the graph passes clamp those indices)."""
    ranges = index_ranges(imported.mod["main"])
    inputs = [
        replace(spec, index_range=ranges.get(i)) if str(spec.dtype).startswith(("int", "uint")) else spec
        for i, spec in enumerate(imported.inputs)
    ]
    return replace(imported, inputs=inputs)


def _import_report(imported) -> ImportReport:
    return ImportReport(
        passes=list(imported.import_passes), format=imported.source_format, frontend=imported.frontend,
        rewrites=list(imported.import_passes), versions=dict(imported.versions),
    )


def _manifest(imported, preset, tvm_target, reports: "CompileReports", seconds: float) -> Manifest:
    """The manifest from what every stage reported (its pass list is theirs, joined)."""
    from . import _tvm

    tuning = reports.schedule.to_json()
    if reports.build.measured_ms is not None:
        tuning["measured_ms"] = reports.build.measured_ms
    extra = {"import": reports.imported.to_json(), "tuning": tuning, "build": {"thread_pool": reports.build.thread_pool}}
    if reports.pruning is not None:
        extra["pruning"] = reports.pruning.to_json()
    if reports.compression is not None:
        extra["compression"] = reports.compression.to_json()
    if reports.quantization is not None:
        extra["quantization"] = reports.quantization.to_json()
    if reports.size_accuracy is not None:
        extra["size_accuracy"] = reports.size_accuracy.to_json()
    return Manifest(
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
        library=reports.build.library,
        weights=reports.build.weights,
        passes=reports.passes(),
        versions={**_versions(preset.device), **imported.versions},
        build_seconds=round(seconds, 3),
        extra=extra,
        compute_capability=_compute_capability(preset),
    )


@dataclass
class CompileReports:
    """Every stage's report, in pipeline order (None: the stage did not run)."""

    imported: ImportReport
    graph: GraphReport | None = None
    pruning: PruningReport | None = None
    compression: CompressionReport | None = None
    quantization: QuantizationReport | None = None
    size_accuracy: SizeAccuracyTable | None = None  # before/after each shrinking step
    lowering: LoweringReport | None = None
    schedule: ScheduleReport | None = None
    build: BuildReport | None = None

    def passes(self) -> list[str]:
        return passes_run(
            self.imported, self.graph, self.pruning, self.compression, self.quantization, self.lowering, self.schedule,
            self.build,
        )


def tune_model(
    model: "str | os.PathLike | torch.nn.Module | torch.export.ExportedProgram",
    target: str = "host",
    budget: "TuningBudget | None" = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    tracker: str | None = None,
    key: str | None = None,
    prune: "PruningConfig | None" = None,
    quantize: "QuantizationConfig | None" = None,
    calibration_data: str | os.PathLike | None = None,
    example_inputs=None,
    compress: "list[CompressionConfig] | tuple" = (),
    max_accuracy_drop: float | None = None,
):
    """Tune a model's kernels for a target into the tuning cache (no artifact); returns a TuningReport.

    tracker ('HOST:PORT') and key: measure the candidates on a device that TVM RPC tracker
    hands out under that key (cross-compiled with the preset's toolchain), not here.
    prune / compress / quantize / calibration_data / max_accuracy_drop: as for compile_model, so the tuned kernels are
    the ones a compile with the same options builds.
    """
    from . import _tvm
    from .tuning.cache import TargetCache
    from .tuning.tuner import TuningBudget, tune

    preset, tvm_target = resolve_preset(load_preset(target))
    measure = None
    if tracker or key:
        from .tuning.remote import RemoteMeasure

        if not tracker:
            raise RemoteError("--key needs --tracker HOST:PORT (remote tuning measures through a tracker)")
        measure = RemoteMeasure.for_preset(preset, tracker, key)
    else:
        from .tuning.remote import require_local_measurement

        require_local_measurement(preset)
    imported = import_model(model, input_shapes=input_shapes, example_inputs=example_inputs)
    imported = with_index_ranges(imported)
    mod, _ = optimize_graph(imported.mod)
    mod = shrink_graph(
        mod, imported.inputs, prune, quantize, calibration_data, preset.device, progress, tvm_target,
        compress=compress, max_accuracy_drop=max_accuracy_drop,
    ).mod
    cache = TargetCache.open(_tvm.target_to_dict(tvm_target), _tvm.TVM_VERSION, cache_dir)
    return tune(lower(mod, tvm_target)[0], tvm_target, cache, budget or TuningBudget(), progress, measure)


def _measured_ms(library: Path, preset, inputs, weights=None) -> float | None:
    """Median latency of the freshly built library on this machine (when it can run here),
    run as the loader runs it: on the library's own thread pool, with the preset's thread
    count. (TVM's time_evaluator on TVM's pool read light ResNet-50 at 56 ms where the
    loader takes 39 ms.)"""
    import numpy as np

    from . import _tvm
    from ..runtime.inputs import random_inputs
    from ..runtime.loader import machine_arch, runtime_threads, time_calls
    from ..runtime.parallel_pool import attach

    if preset.device != "cpu" or preset.arch != machine_arch() or library.suffix != ".so":
        return None
    tvm = _tvm.tvm
    device = tvm.cpu()
    module = tvm.runtime.load_module(str(library))
    pool = attach(library, runtime_threads(preset.build.threads))
    main = _tvm.relax.VirtualMachine(module, device)["main"]
    args = [tvm.runtime.tensor(a, device) for a in random_inputs(inputs)]
    args += [tvm.runtime.tensor(w, device) for w in weights or []]
    time_calls(main, args, device, pool, repeat=3)  # warm-up
    return round(float(np.median(time_calls(main, args, device, pool, repeat=15))) * 1e3, 6)


def _compute_capability(preset) -> str | None:
    """The oldest GPU the device code runs on: the preset's arch (its PTX JITs on newer ones)."""
    from ..runtime.devices import compute_capability_of_arch

    return compute_capability_of_arch(str(preset.target["arch"])) if preset.device == "cuda" else None


def _versions(device: str = "cpu") -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import onnx

    from . import _tvm

    found = {"tvmdeploy": __version__, "tvm": _tvm.TVM_VERSION, "onnx": onnx.__version__}
    try:
        found["tvm-ffi"] = version("apache-tvm-ffi")
    except PackageNotFoundError:  # pragma: no cover - a source build of TVM
        pass
    if device == "cuda":
        from .cuda_build import nvcc_version

        found["nvcc"] = nvcc_version() or "unknown"
    return found
