"""fp32 CPU speed: tvmdeploy untuned (and tuned) vs ONNX Runtime, per model, plus where the
time goes per kernel. Not a test: it compiles (and with --minutes/--trials, tunes) and
prints ratios. Machines here are noisy: only ratios within one interleaved run mean
anything, and nothing else should run meanwhile.

    # a quick subset (about 5-10 minutes on 2 cores): untuned only
    .venv/bin/python tests/benchmarks/fp32_speed.py --models digits,squeezenet,mobilenetv2
    # everything, untuned
    .venv/bin/python tests/benchmarks/fp32_speed.py
    # tuned too: each model tunes for N minutes into --cache-dir (kept between runs)
    .venv/bin/python tests/benchmarks/fp32_speed.py --models resnet50 --minutes 60
    # per-call overhead A/B: bytecode vs compiled VM, small kernels serial vs parallel
    .venv/bin/python tests/benchmarks/fp32_speed.py --models digits --ab-overhead

Models: light ResNet-50 / SqueezeNet / ShuffleNet (the onnx package's, as shipped),
a MobileNetV2 defined here in torch and exported with torch.onnx.export, a BERT-base-sized
encoder layer (hidden 768, 12 heads, seq 128, batch 1; torch export), and the digits CNN.

Per model: latency of ONNX Runtime and of each tvmdeploy artifact, interleaved in one run
with the same thread count (tvmdeploy.runtime.bench), the ratios (tvmdeploy / ONNX
Runtime; < 1 is faster), and a per-kernel table for the last artifact: calls, time per
call (each kernel timed alone on random inputs), GFLOPS, share of the summed kernel time,
and % of the machine's fp32 peak = threads x vector lanes x 2 (FMA) x FMA units x GHz;
then the same artifact's kernels as they run in sequence in an inference, beside ONNX
Runtime's own per-operator profile.
Lanes come from the target preset (16 AVX-512, 8 AVX2, 4 NEON); FMA units (default 2)
and the clock (default: /proc/cpuinfo "cpu MHz", which under a hypervisor is the nominal
one) can be given with --fma-units / --ghz.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

MODELS = ("resnet50", "squeezenet", "shufflenet", "mobilenetv2", "bert_layer", "digits")


# --------------------------------------------------------------------------- models


def model_file(name: str, work: Path) -> Path:
    import onnx

    if name in ("resnet50", "squeezenet", "shufflenet"):
        return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"
    if name == "digits":
        from tvmdeploy.data import DIGITS_CNN

        return Path(DIGITS_CNN)
    path = work / f"{name}.onnx"
    if not path.exists():
        {"mobilenetv2": _export_mobilenetv2, "bert_layer": _export_bert_layer}[name](path)
    return path


def _torch_export(model, example, path: Path, input_name: str) -> None:
    import warnings

    import torch

    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        # The TorchScript exporter (the default dynamo one needs onnxscript, not installed here).
        torch.onnx.export(model, (example,), str(path), input_names=[input_name], output_names=["output"],
                          opset_version=17, dynamo=False)


def _export_mobilenetv2(path: Path) -> None:
    """MobileNetV2 (width 1.0, 224x224, 1000 classes), defined here, random weights."""
    import torch
    from torch import nn

    def conv_bn(inp, out, k, stride, groups=1, act=True):
        layers = [nn.Conv2d(inp, out, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(out)]
        return layers + ([nn.ReLU6(inplace=True)] if act else [])

    class InvertedResidual(nn.Module):
        def __init__(self, inp, out, stride, expand):
            super().__init__()
            hidden = inp * expand
            layers = conv_bn(inp, hidden, 1, 1) if expand != 1 else []
            layers += conv_bn(hidden, hidden, 3, stride, groups=hidden) + conv_bn(hidden, out, 1, 1, act=False)
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and inp == out

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    class MobileNetV2(nn.Module):
        def __init__(self):
            super().__init__()
            settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
            layers, inp = conv_bn(3, 32, 3, 2), 32
            for t, c, n, s in settings:
                for i in range(n):
                    layers.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                    inp = c
            layers += conv_bn(inp, 1280, 1, 1)
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Linear(1280, 1000)

        def forward(self, x):
            return self.classifier(self.features(x).mean((2, 3)))

    torch.manual_seed(0)
    model = MobileNetV2()
    for m in model.modules():  # non-trivial BatchNorm statistics, so folding them is exercised
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    _torch_export(model, torch.randn(1, 3, 224, 224), path, "image")


def _export_bert_layer(path: Path) -> None:
    """One BERT-base encoder layer: hidden 768, 12 heads, FFN 3072, seq 128, batch 1."""
    import torch
    from torch import nn

    class EncoderLayer(nn.Module):
        def __init__(self, hidden=768, heads=12, ffn=3072):
            super().__init__()
            self.heads, self.dim = heads, hidden // heads
            self.qkv = nn.Linear(hidden, 3 * hidden)
            self.out = nn.Linear(hidden, hidden)
            self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
            self.ff1, self.ff2 = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)

        def forward(self, x):
            b, s, h = x.shape
            q, k, v = self.qkv(x).reshape(b, s, 3, self.heads, self.dim).permute(2, 0, 3, 1, 4)
            attn = torch.softmax(q @ k.transpose(-1, -2) / self.dim**0.5, dim=-1)
            ctx = (attn @ v).transpose(1, 2).reshape(b, s, h)
            x = self.norm1(x + self.out(ctx))
            return self.norm2(x + self.ff2(torch.nn.functional.gelu(self.ff1(x))))

    torch.manual_seed(0)
    _torch_export(EncoderLayer(), torch.randn(1, 128, 768), path, "tokens")


# --------------------------------------------------------------------------- per-kernel table


def fp32_peak_gflops(tvm_target, threads: int, fma_units: int, ghz: float | None) -> tuple[float, str]:
    from tvmdeploy.compiler._tvm import cpu_features
    from tvmdeploy.compiler.tuning.analytic import vector_shape

    features = cpu_features(tvm_target)
    triple = str(tvm_target.attrs.get("mtriple", ""))
    lanes, _ = vector_shape(features, triple)  # what the default schedules assume too
    fma = 2 if ("fma" in features or "neon" in features or triple.startswith("aarch64")) else 1
    if ghz is None:
        ghz = _cpuinfo_ghz()
    peak = threads * lanes * fma * fma_units * ghz
    return peak, f"{threads} thread(s) x {lanes} lanes x {fma} (FMA) x {fma_units} FMA units x {ghz:.2f} GHz = {peak:.0f} GFLOPS"


def _cpuinfo_ghz() -> float:
    try:
        for line in open("/proc/cpuinfo"):
            if line.lower().startswith("cpu mhz"):
                return float(line.split(":")[1]) / 1e3
    except OSError:
        pass
    return 2.0


def scheduled_module(onnx_path: Path, target_name: str, cache_dir: Path):
    """The kernels as the artifact built them (same stages, same cache): Relax module + target."""
    from tvmdeploy.compiler import _tvm
    from tvmdeploy.compiler.frontend import import_model
    from tvmdeploy.compiler.lowering import lower
    from tvmdeploy.compiler.optimize import optimize_graph
    from tvmdeploy.compiler.pipeline import schedule_kernels
    from tvmdeploy.compiler.presets import load_preset, resolve_preset
    from tvmdeploy.compiler.tuning.cache import TargetCache

    preset, target = resolve_preset(load_preset(target_name))
    mod, _ = optimize_graph(import_model(onnx_path).mod)
    fused, _ = lower(mod, target)
    cache = TargetCache.open(_tvm.target_to_dict(target), _tvm.TVM_VERSION, cache_dir)
    scheduled, _ = schedule_kernels(fused, target, preset, cache)
    return scheduled, target


def kernel_table(artifact: Path, onnx_path: Path, target_name: str, cache_dir: Path, threads: int,
                 fma_units: int, ghz: float | None, number: int, rounds: int = 7) -> str:
    import tvm

    from tvmdeploy.compiler import _tvm

    scheduled, target = scheduled_module(onnx_path, target_name, cache_dir)
    calls: dict[str, int] = {}

    def visit(expr):
        if isinstance(expr, tvm.relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name in (
            "relax.call_tir", "relax.call_tir_inplace"
        ):
            name = expr.args[0].name_hint
            calls[name] = calls.get(name, 0) + 1

    tvm.relax.analysis.post_order_visit(scheduled["main"].body, visit)
    # The kernels built here from the re-derived schedules (the same records and defaults
    # the artifact used): an artifact's library names its kernels after its own lowering,
    # which for tuned kernels does not always match these names.
    kernels = {gv.name_hint: func for gv, func in scheduled.functions_items()
               if isinstance(func, _tvm.PrimFunc) and gv.name_hint in calls}
    built = _tvm.compile_executable(tvm.ir.IRModule({n: f.with_attr("global_symbol", n) for n, f in kernels.items()}), target)
    library = getattr(built, "mod", built)
    device = tvm.cpu()
    rng = np.random.default_rng(0)
    timers = {}
    for name, func in kernels.items():
        args = []
        for info in _tvm.ms.arg_info.ArgInfo.from_prim_func(func):
            shape, dtype = [int(d) for d in info.shape], str(info.dtype)
            values = rng.standard_normal(shape).astype(dtype) if "float" in dtype else np.zeros(shape, dtype)
            args.append(tvm.runtime.tensor(values, device))
        owner = next((m for m in [library, *library.imports] if m.implements_function(name)), None)
        if owner is not None:
            timers[name] = (owner.time_evaluator(name, device, number=number, repeat=1), args)
    # Rounds over all kernels, the median per kernel: with the workers asleep between
    # calls, one kernel timed in one stretch read 870-1410 us from stretch to stretch on
    # this VM (734-747 us spinning); spread over the run, every kernel sees the same drift.
    samples: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(rounds):
        for name, (timer, args) in timers.items():
            samples[name].append(float(timer(*args).results[0]))
    rows = []
    for name, func in kernels.items():
        flops = _tvm.estimate_flops(tvm.ir.IRModule({"main": func}))
        seconds = float(np.median(samples[name])) if samples.get(name) else float("nan")
        rows.append((name, calls[name], flops, seconds))
    peak, peak_text = fp32_peak_gflops(target, threads, fma_units, ghz)
    total = sum(c * s for _, c, _, s in rows)
    lines = [f"  per kernel (each timed alone, median of {rounds} rounds over all kernels; fp32 peak: {peak_text})",
             f"  {'kernel':<52}{'calls':>6}{'us/call':>10}{'GFLOPS':>9}{'share':>8}{'% peak':>8}"]
    for name, n, flops, seconds in sorted(rows, key=lambda r: -r[1] * r[3]):
        gflops = flops / seconds / 1e9 if seconds > 0 else 0.0
        lines.append(f"  {name[:51]:<52}{n:>6}{seconds * 1e6:>10.1f}{gflops:>9.1f}"
                     f"{100 * n * seconds / total:>7.1f}%{100 * gflops / peak:>7.1f}%")
    lines.append(f"  sum of kernels: {total * 1e3:.3f} ms per inference ({len(rows)} kernels, {sum(r[1] for r in rows)} calls)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- in sequence


def sequence_table(artifact: Path, onnx_path: Path, threads: int, runs: int = 20, top: int = 25) -> str:
    """Where an inference's time goes, kernel by kernel as they run in sequence (each
    kernel's own weights and its producer's output in whatever cache they are in), beside
    ONNX Runtime's own profile of the same model by operator. Timed alone, hot, kernels read
    up to a third faster than in sequence, which is what an inference pays."""
    import onnxruntime as ort

    from tvmdeploy import load

    model = load(artifact, threads=threads)
    tensors = [model._tvm.runtime.tensor(a, model._device) for a in model.random_inputs()] + model._weights
    for _ in range(3):
        model._run(*tensors)
    started: dict[str, float] = {}
    calls: list[tuple[str, float]] = []

    def instrument(func, symbol, before, result, *args):
        now = time.perf_counter()
        if before:
            started[symbol] = now
        elif not symbol.startswith("vm.builtin"):
            calls.append((symbol, now - started[symbol]))
        return 0

    model._vm.set_instrument(instrument)
    per_run = []
    for _ in range(runs):
        calls.clear()
        model._run(*tensors)
        per_run.append(list(calls))
    model._vm.set_instrument(lambda *a: 0)
    medians = np.median(np.array([[seconds for _, seconds in run] for run in per_run]), axis=0)
    totals: dict[str, list] = {}
    for (name, _), seconds in zip(per_run[0], medians):
        totals.setdefault(name, [0, 0.0])
        totals[name][0] += 1
        totals[name][1] += seconds
    whole = float(medians.sum())
    lines = [f"  in sequence (median of {runs} instrumented inferences; kernels sum to {whole * 1e3:.3f} ms)",
             f"  {'kernel':<52}{'calls':>6}{'us/call':>10}{'share':>8}"]
    for name, (count, seconds) in sorted(totals.items(), key=lambda kv: -kv[1][1])[:top]:
        lines.append(f"  {name[:51]:<52}{count:>6}{seconds / count * 1e6:>10.1f}{100 * seconds / whole:>7.1f}%")
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.enable_profiling = threads, True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="tvmdeploy-ort-profile-")) / "ort")
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: a for i, a in zip(session.get_inputs(), model.random_inputs())}
    for _ in range(3 + runs):
        session.run(None, feeds)
    import json

    events = json.loads(Path(session.end_profiling()).read_text())
    by_op: dict[str, list] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            by_op.setdefault(op, []).append(event["dur"])
    ort_total = sum(sum(durations) for durations in by_op.values()) / (3 + runs) / 1e3
    lines.append(f"  ONNX Runtime's profile by operator (mean of {3 + runs} runs; nodes sum to {ort_total:.3f} ms)")
    for op, durations in sorted(by_op.items(), key=lambda kv: -sum(kv[1])):
        ms = sum(durations) / (3 + runs) / 1e3
        lines.append(f"  {op:<52}{len(durations) // (3 + runs):>6}{ms * 1e3 / max(1, len(durations) // (3 + runs)):>10.1f}{100 * ms / ort_total:>7.1f}%")
    return "\n".join(lines)


# --------------------------------------------------------------------------- overhead A/B


def ab_overhead(onnx_path: Path, target_name: str, threads: int, repeat: int) -> str:
    """bytecode vs compiled VM, and small kernels serial (today) vs every kernel parallel,
    all built here from the same default schedules and timed interleaved."""
    import tvm

    from tvmdeploy.compiler import _tvm
    from tvmdeploy.compiler.frontend import import_model
    from tvmdeploy.compiler.lowering import fold_weight_layouts, lower_for_tuning
    from tvmdeploy.compiler.optimize import optimize_graph
    from tvmdeploy.compiler.presets import load_preset, resolve_preset
    from tvmdeploy.compiler.tuning import default_schedule

    _, target = resolve_preset(load_preset(target_name))
    imported = import_model(onnx_path)
    fused = lower_for_tuning(optimize_graph(imported.mod)[0], target)
    kernels = sum(isinstance(f, _tvm.PrimFunc) for _, f in fused.functions_items())
    device = tvm.cpu()
    rng = np.random.default_rng(0)
    inputs = [tvm.runtime.tensor(rng.standard_normal(s.shape).astype(s.dtype), device) for s in imported.inputs]
    saved = default_schedule.SERIAL_BELOW_FLOPS
    variants = {}
    folder = Path(tempfile.mkdtemp(prefix="tvmdeploy-ab-"))
    try:
        for serial in (saved, 0.0):
            default_schedule.SERIAL_BELOW_FLOPS = serial
            scheduled = fold_weight_layouts(default_schedule.apply_default_schedules(fused, target)[0], target)
            for mode in ("bytecode", "compiled"):
                name = f"{mode}, {'small kernels serial' if serial else 'all parallel'}"
                path = folder / f"{mode}-{int(serial)}.so"
                _tvm.relax.build(scheduled, target, exec_mode=mode, tir_pipeline=_tvm.TIR_PIPELINE).export_library(str(path))
                vm = _tvm.relax.VirtualMachine(tvm.runtime.load_module(str(path)), device)
                variants[name] = vm.time_evaluator("main", device, number=20, repeat=1)
    finally:
        default_schedule.SERIAL_BELOW_FLOPS = saved
    results = {name: [] for name in variants}
    for i in range(repeat):
        order = list(variants) if i % 2 == 0 else list(reversed(variants))
        for name in order:
            results[name].append(variants[name](*inputs).mean)
    base = np.median(results[next(iter(results))])
    lines = [f"  per-call overhead A/B ({kernels} kernels, {threads} thread(s), {repeat} interleaved rounds of 20 calls)"]
    for name, values in results.items():
        median = float(np.median(values))
        lines.append(f"  {name:<40}{median * 1e6:>10.1f} us  ({median / base:.3f}x the first)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma list from {', '.join(MODELS)}")
    parser.add_argument("--minutes", type=float, default=None, help="also tune each model for this many minutes")
    parser.add_argument("--trials", type=int, default=None, help="also tune each model with this trial budget")
    parser.add_argument("--target", default="host", help="preset (the artifacts run here, so a preset for this machine)")
    parser.add_argument("--threads", type=int, default=2, help="threads for tvmdeploy and ONNX Runtime alike")
    parser.add_argument("--repeat", type=int, default=30, help="interleaved timed runs per runtime")
    parser.add_argument("--work", default=None, help="folder for exported models and artifacts")
    parser.add_argument("--cache-dir", default=None, help="tuning cache for tuned runs (default: <work>/cache)")
    parser.add_argument("--no-kernels", action="store_true", help="skip the per-kernel tables")
    parser.add_argument("--kernel-number", type=int, default=10, help="calls per kernel timing")
    parser.add_argument("--ab-overhead", action="store_true", help="also A/B the VM exec mode and serial small kernels")
    parser.add_argument("--fma-units", type=int, default=2)
    parser.add_argument("--ghz", type=float, default=None)
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before TVM's thread pool starts
    from tvmdeploy.runtime.thread_pool import WORKER_SPIN_COUNT

    # Compiling in this process may start TVM's thread pool before the loader would set its
    # spinning, so set it here: the figures are what the loader gives a user.
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", str(WORKER_SPIN_COUNT))

    from tvmdeploy import compile_model
    from tvmdeploy.compiler.tuning.budget import TuningBudget
    from tvmdeploy.runtime.bench import bench_artifact

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    work = Path(args.work or tempfile.mkdtemp(prefix="tvmdeploy-fp32-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache_dir) if args.cache_dir else work / "cache"
    tune = None
    if args.minutes or args.trials:
        tune = TuningBudget(minutes=args.minutes, trials=args.trials)  # minutes alone: tune until they are spent
    print(f"CPU: {_cpu_name()}; work folder {work}")
    summary = []
    for name in names:
        path = model_file(name, work)
        started = time.perf_counter()
        # Untuned: an empty cache, so every kernel gets the default schedule.
        untuned = compile_model(path, args.target, output_dir=work / f"{name}-untuned", cache_dir=work / "empty-cache").artifact_dir
        print(f"\n{name}: untuned compile {time.perf_counter() - started:.0f} s")
        compare, tuned = ["onnxruntime"], None
        if tune is not None:
            started = time.perf_counter()
            result = compile_model(path, args.target, output_dir=work / f"{name}-tuned", tune=tune, cache_dir=cache)
            tuned, tuning = result.artifact_dir, result.manifest.extra.get("tuning", {})
            print(
                f"{name}: tuned compile {time.perf_counter() - started:.0f} s "
                f"({tuning.get('trials')} trials in {tuning.get('seconds', 0) / 60:.1f} min, stopped by {tuning.get('stopped_by')})"
            )
            compare.append(str(tuned))
        report = bench_artifact(untuned, compare=tuple(compare), model_path=path, threads=args.threads, repeat=args.repeat)
        print(report.table())
        ort = next(t for t in report.timings if t.name == "onnxruntime").median_ms
        row = {"model": name, "onnxruntime ms": ort, "untuned ms": report.timings[0].median_ms}
        if tuned is not None:
            row["tuned ms"] = next(t for t in report.timings if t.name == tuned.resolve().name).median_ms
        summary.append(row)
        if not args.no_kernels:
            last, last_cache = (tuned, cache) if tuned is not None else (untuned, work / "empty-cache")
            print(kernel_table(last, path, args.target, last_cache, args.threads, args.fma_units, args.ghz, args.kernel_number))
            print(sequence_table(last, path, args.threads))
        if args.ab_overhead:
            print(ab_overhead(path, args.target, args.threads, max(5, args.repeat // 3)))
    print(f"\nsummary ({args.threads} thread(s), ratios = tvmdeploy / ONNX Runtime, < 1 is faster; CPU: {_cpu_name()})")
    print(f"  {'model':<14}{'ORT ms':>10}{'untuned ms':>12}{'ratio':>8}" + (f"{'tuned ms':>10}{'ratio':>8}" if tune else ""))
    for row in summary:
        line = f"  {row['model']:<14}{row['onnxruntime ms']:>10.3f}{row['untuned ms']:>12.3f}{row['untuned ms'] / row['onnxruntime ms']:>8.2f}"
        if "tuned ms" in row:
            line += f"{row['tuned ms']:>10.3f}{row['tuned ms'] / row['onnxruntime ms']:>8.2f}"
        print(line)


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
