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
class CompressionReport(StageReport):
    """Low-rank factorization and clustering: what each method did to which layer."""

    methods: list = field(default_factory=list)  # in the order applied ("lowrank", "cluster")
    config: list = field(default_factory=list)
    layers: dict = field(default_factory=dict)  # method -> per-layer rows (rank / bits)
    skipped: list = field(default_factory=list)
    budget: dict | None = None  # the search's accounting, when one budget spans the methods
    sensitivity: list = field(default_factory=list)
    evaluations: int = 0
    seconds: float = 0.0


@dataclass
class SizeAccuracyTable(StageReport):
    """Before and after each shrinking step, against the original model: the table users
    judge compression by (printed by `tvmdeploy compile`, recorded in the manifest)."""

    data: str = ""  # what accuracy was measured on
    rows: list = field(default_factory=list)

    def add(self, step: str, stats: dict, accuracy: dict | None, same_macs: bool = False) -> dict:
        """same_macs: the step does not change the arithmetic (int8 computes the same
        multiply-accumulates in packed kernels the op count cannot see)."""
        row = {"step": step, **{k: stats[k] for k in ("params", "nonzero_params", "macs", "weight_bytes", "compact_weight_bytes")}}
        if same_macs and self.rows:
            row["macs"] = self.rows[-1]["macs"]
        if accuracy is not None:
            row.update(metric=accuracy["metric"], accuracy=accuracy["after"], drop=accuracy["drop"],
                       output_sqnr_db=accuracy["output_sqnr_db"])
            if len(self.rows) == 1 and "accuracy" not in self.rows[0]:  # the original's own figure
                self.rows[0].update(metric=accuracy["metric"], accuracy=accuracy["before"], drop=0.0, output_sqnr_db=None)
        self.rows.append(row)
        return row

    def finish(self, weights_apart: bool) -> None:
        """Stored bytes: compactly encoded when the weights travel beside the library."""
        for row in self.rows:
            row["stored_bytes"] = row["compact_weight_bytes"] if weights_apart else row["weight_bytes"]

    def text(self) -> str:
        head = f"{'step':<22}{'params':>11}{'non-zero':>11}{'stored bytes':>14}{'x':>7}{'MACs':>13}{'x':>7}  accuracy (drop)   SQNR dB"
        lines = [head]
        first = self.rows[0]
        for row in self.rows:
            acc = f"{row['accuracy']:.2f} ({-row['drop']:+.2f})" if "accuracy" in row else "-"
            sqnr = ", ".join("inf" if v is None else f"{v:.1f}" for v in row.get("output_sqnr_db") or []) or "-"
            lines.append(
                f"{row['step']:<22}{row['params']:>11,}{row['nonzero_params']:>11,}{row['stored_bytes']:>14,}"
                f"{row['stored_bytes'] / max(first['stored_bytes'], 1):>7.3f}{row['macs']:>13,}"
                f"{row['macs'] / max(first['macs'], 1):>7.3f}  {acc:<17} {sqnr}"
            )
        metric = next((r["metric"] for r in self.rows if "metric" in r), "top1")
        return f"size and accuracy ({metric} on {self.data}):\n  " + "\n  ".join(lines)


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
    packed_conv2d: int = 0  # float32 convolutions on the packed NHWC kernels (kernels/fp32_packed.py)
    winograd_conv2d: int = 0  # of those, 3x3 ones run as Winograd F(4x4, 3x3) (kernels/fp32_winograd.py)
    packed_dense: int = 0  # float32 matmuls by constant weights on the packed dense kernel


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
    thread_pool: str = "tvm"  # "tvmdeploy": the library carries tvmdeploy's pool (native/parallel_pool.c)


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
