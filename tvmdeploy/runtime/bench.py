"""Benchmark an artifact against ONNX Runtime: same model, inputs and thread count,
interleaved in one process after warm-up, so machine noise hits both alike.

Each runtime keeps its own defaults, as a user gets them: ONNX Runtime's workers spin
between operators (and ~40 ms past a run), tvmdeploy's loader keeps TVM's workers from
spinning (runtime/thread_pool.py). Runs alternate in blocks: a pause for the other runtime's
spinning workers to go to sleep, one untimed run, then `block` timed runs back to back.
Alternating single runs made each runtime's spinning workers steal a core from the
other's runs (on 2 cores: TVM 6.6 ms instead of 3.4, ONNX Runtime up to 3x slower).

Reports median and p90 latency of each and the ratio (tvmdeploy / peer; < 1 is faster).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import TvmDeployError
from .loader import load


@dataclass(frozen=True)
class Timing:
    name: str
    seconds: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return float(np.median(self.seconds) * 1e3)

    @property
    def p90_ms(self) -> float:
        return float(np.percentile(self.seconds, 90) * 1e3)


@dataclass
class BenchReport:
    artifact: Path
    model_name: str
    preset: str
    threads: int
    timings: list[Timing]
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # peer -> max |tvm - peer|
    tuning_curve: list[tuple[int, float]] = field(default_factory=list)  # (trials, est. ms)

    def ratio(self, peer: str) -> float:
        ours = self.timings[0].median_ms
        theirs = next(t for t in self.timings if t.name == peer).median_ms
        return ours / theirs

    def table(self) -> str:
        lines = [
            f"{self.model_name} ({self.preset}), {self.threads} thread(s), "
            f"{len(self.timings[0].seconds)} timed runs each, in interleaved blocks after warm-up",
            f"  {'runtime':<14}{'median ms':>12}{'p90 ms':>12}{'ratio':>10}",
        ]
        for t in self.timings:
            ratio = "" if t is self.timings[0] else f"{self.ratio(t.name):>10.3f}"
            lines.append(f"  {t.name:<14}{t.median_ms:>12.3f}{t.p90_ms:>12.3f}{ratio}")
        for peer in self.max_abs_diff:
            lines.append(f"  tvmdeploy/{peer} latency ratio: {self.ratio(peer):.3f} (< 1: tvmdeploy is faster); "
                         f"max |output difference|: {self.max_abs_diff[peer]:.3g}")
        return "\n".join(lines)


def bench_artifact(
    artifact: str | os.PathLike,
    compare: tuple[str, ...] = ("onnxruntime",),
    model_path: str | os.PathLike | None = None,
    threads: int | None = None,
    warmup: int = 5,
    repeat: int = 30,
    seed: int = 0,
    settle_s: float = 0.1,
    block: int = 5,
) -> BenchReport:
    artifact = Path(artifact)
    threads = threads or _cpu_count()
    model = load(artifact, threads=threads)
    manifest = model.manifest
    inputs = dict(zip((s.name for s in model.inputs), model.random_inputs(seed)))

    runners = {"tvmdeploy": lambda: model(**inputs)}
    names = []
    for peer in compare:
        if peer == "onnxruntime":
            runners[peer] = _onnxruntime_runner(Path(model_path or manifest.source_file), inputs, threads)
        elif peer.startswith("onnxruntime:"):
            # ONNX Runtime on another export of the model (e.g. its quantize_static QDQ model).
            other = Path(peer.split(":", 1)[1])
            if not other.is_file():
                raise TvmDeployError(f"--compare {peer}: no such ONNX file {other}")
            peer = f"ort:{other.stem}"
            runners[peer] = _onnxruntime_runner(other, inputs, threads)
        elif (Path(peer) / "manifest.json").is_file():
            # Another artifact of the same model (unpruned vs pruned, untuned vs tuned).
            peer_name = Path(peer).resolve().name
            runners[peer_name] = _artifact_runner(Path(peer), model, inputs, threads)
            peer = peer_name
        else:
            raise TvmDeployError(
                f"unknown peer '{peer}' for --compare (supported: onnxruntime, onnxruntime:MODEL.onnx, "
                "or another artifact folder)"
            )
        names.append(peer)
    compare = tuple(names)

    outputs = {name: run() for name, run in runners.items()}
    diffs = {
        peer: max(float(np.max(np.abs(a - b))) for a, b in zip(outputs["tvmdeploy"], outputs[peer]))
        for peer in compare
    }
    for _ in range(warmup):
        for run in runners.values():
            run()
    seconds = {name: [] for name in runners}
    order = list(runners)
    for i in range(-(-repeat // block)):
        # Alternate who goes first, so neither always runs with a warmer cache.
        for name in order if i % 2 == 0 else reversed(order):
            time.sleep(settle_s)
            runners[name]()
            for _ in range(min(block, repeat - i * block)):
                start = time.perf_counter()
                runners[name]()
                seconds[name].append(time.perf_counter() - start)
    curve = [tuple(p) for p in manifest.extra.get("tuning", {}).get("curve", [])]
    return BenchReport(
        artifact=artifact,
        model_name=manifest.model_name,
        preset=manifest.preset,
        threads=threads,
        timings=[Timing(name, tuple(s)) for name, s in seconds.items()],
        max_abs_diff=diffs,
        tuning_curve=curve,
    )


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def _artifact_runner(folder: Path, ours, inputs: dict[str, np.ndarray], threads: int):
    other = load(folder, threads=threads)
    if [(s.name, s.shape, s.dtype) for s in other.inputs] != [(s.name, s.shape, s.dtype) for s in ours.inputs]:
        raise TvmDeployError(
            f"{folder} takes inputs {', '.join(s.describe() for s in other.inputs)}, the artifact "
            f"{', '.join(s.describe() for s in ours.inputs)}: not comparable"
        )
    return lambda: other(**inputs)


def _onnxruntime_runner(model_path: Path, inputs: dict[str, np.ndarray], threads: int):
    try:
        import onnxruntime as ort
    except ImportError:
        raise TvmDeployError("--compare onnxruntime needs onnxruntime: pip install onnxruntime") from None
    if model_path.suffix.lower() != ".onnx":
        # A PyTorch (.pt2, in-memory module) or TFLite source: ONNX Runtime cannot run it.
        raise TvmDeployError(
            f"the artifact was compiled from {model_path}, which is not ONNX: compare with "
            f"--compare onnxruntime:MODEL.onnx (an ONNX export of the same model), --model MODEL.onnx, "
            f"or another artifact folder"
        )
    if not model_path.is_file():
        raise TvmDeployError(
            f"the artifact's source model {model_path} is gone; pass the .onnx file with --model"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    expected = {i.name for i in session.get_inputs()}
    if expected != set(inputs):
        raise TvmDeployError(
            f"{model_path} takes inputs {sorted(expected)}, the artifact {sorted(inputs)}: not the same model"
        )
    return lambda: session.run(None, inputs)


def write_chart(report: BenchReport, path: str | os.PathLike) -> Path:
    """Latency bars (median, p90 whisker); for a tuned artifact, also the tuning curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if report.tuning_curve else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    ax = axes[0][0]
    names = [t.name for t in report.timings]
    medians = [t.median_ms for t in report.timings]
    errors = [[0] * len(names), [t.p90_ms - t.median_ms for t in report.timings]]
    bars = ax.bar(names, medians, yerr=errors, capsize=6, color=["#3b7dd8", "#999999", "#cc8844"][: len(names)])
    for bar, value in zip(bars, medians):
        ax.annotate(f"{value:.2f} ms", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom")
    ax.set_ylabel("latency (ms), median; whisker: p90")
    ax.set_title(f"{report.model_name} on {report.preset}, {report.threads} thread(s)")
    if report.tuning_curve:
        ax2 = axes[0][1]
        trials, est = zip(*report.tuning_curve)
        ax2.plot(trials, est, marker=".")
        ax2.set_xlabel("tuning trials")
        ax2.set_ylabel("best estimated latency (ms)")
        ax2.set_title("tuning curve")
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
