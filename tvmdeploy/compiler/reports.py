"""What each compile stage did, as typed reports; the manifest is assembled from them.

Every stage returns one report naming the passes it actually ran (`passes`), in order.
The manifest's `passes` list is the concatenation of the stages' lists (see `passes_run`),
so no pass name is written anywhere but in the stage that ran it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "to_json"):
        return value.to_json()
    return value


@dataclass
class StageReport:
    """Common to every stage: the passes it ran, in order."""

    passes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return _plain({k: getattr(self, k) for k in self.__dataclass_fields__})


@dataclass
class ImportReport(StageReport):
    format: str = "onnx"  # "onnx", "pytorch", "tflite"
    frontend: str = ""  # the TVM importer that converted it
    rewrites: list[str] = field(default_factory=list)  # what the import changed before/while converting
    versions: dict = field(default_factory=dict)  # the source framework's version ({"torch": "2.13.0"})


@dataclass
class GraphReport(StageReport):
    """Graph-level passes (constant and BatchNorm folding, simplification)."""


@dataclass
class PruningReport(StageReport):
    scheme: str = ""  # "structured" | "magnitude"
    config: dict = field(default_factory=dict)
    layers: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    before: dict = field(default_factory=dict)  # ModelStats.to_json()
    after: dict = field(default_factory=dict)
    accuracy: dict = field(default_factory=dict)
    sensitivity: list = field(default_factory=list)
    evaluations: int = 0
    seconds: float = 0.0
    stores_weights_apart: bool = False  # zeroed weights travel compactly beside the library


@dataclass
class QuantizationReport(StageReport):
    scheme: str = ""  # "int8-weight" | "int8" | "qdq-int8" | "fp16"
    config: dict = field(default_factory=dict)
    layers: list = field(default_factory=list)
    activation_scales: dict | None = None  # per-tensor (static) input scales
    per_token_layers: list | None = None  # int8 layers whose input scale is per row (token), at run time
    smoothed_layers: list | None = None  # int8 layers with SmoothQuant factors folded into their weights
    # Per layer int8 SQNR (dB): matmul, of its output on calibration rows; conv2d, estimated
    # from input and weight rounding. `_static_db`: the same with per-tensor activation
    # scales and no smoothing (the scheme before per-token and smoothing), for comparison.
    layer_sqnr_db: dict | None = None
    layer_sqnr_static_db: dict | None = None
    kept_float: list = field(default_factory=list)
    kernels: dict | None = None  # packed int8 kernels: intrinsic, packed layers
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    accuracy: dict = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class LoweringReport(StageReport):
    kernels: int = 0  # fused TIR kernels after lowering


@dataclass
class ScheduleReport(StageReport):
    kernels_from_cache: int = 0
    kernels_default: int = 0
    cache_folder: str = ""
    tuning: Any = None  # TuningReport when this compile tuned

    def to_json(self) -> dict:
        d = self.tuning.to_json() if self.tuning is not None else {"cache_folder": self.cache_folder}
        d["kernels_scheduled_from_cache"] = self.kernels_from_cache
        d["kernels_default_schedule"] = self.kernels_default
        return d


@dataclass
class BuildReport(StageReport):
    library: str = ""
    weights: str = "embedded"  # or the weights file beside the library
    measured_ms: float | None = None  # median latency here, when this compile tuned and can run here


def passes_run(*reports: StageReport | None) -> list[str]:
    """The manifest's pass list: every stage's passes, in pipeline order."""
    return [name for report in reports if report is not None for name in report.passes]


class PassLog(list):
    """The names of the passes a stage ran, taken from the passes themselves as they run."""

    def run(self, tvm_pass, mod):
        from .passes.carry import apply_pass

        out = apply_pass(tvm_pass, mod)
        self.append(str(tvm_pass.info.name))
        return out

    def run_all(self, make_passes, mod, stage: str):
        """Each pass factory in order; a failure is one BuildError naming the stage and pass."""
        from ..errors import BuildError, TvmDeployError, summarize_exception

        for make_pass in make_passes:
            tvm_pass = make_pass()
            try:
                mod = self.run(tvm_pass, mod)
            except TvmDeployError:
                raise
            except Exception as e:
                raise BuildError(f"{stage} pass {tvm_pass.info.name} failed: {summarize_exception(e)}") from e
        return mod
