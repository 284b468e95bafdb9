"""Quantization, top to bottom: (calibrate), rewrite, measure against float, gate, report.

`quantize_graph` takes the optimized (and possibly pruned) Relax module and returns the
quantized module plus the report for the manifest. Accuracy is measured by building
both the float and the quantized model for this machine and running them on the
calibration samples (or seeded random inputs): SQNR of every output against float, and
top-1 (accuracy with labels, else agreement with float).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from .._tvm import relax, tvm
from ..calibration import accuracy_report, random_calibration, sqnr_db
from ..host_eval import HostModel
from ..kernels.select import packed_int8_for
from ..passes.quantize_int8 import (
    PACKED_SUFFIX,
    FoldBiasIntoInt32,
    FuseDecodeIntoConsumer,
    QuantizeLayersInt8,
    QuantizeWeightsInt8,
    SmoothLayerInputs,
)
from ..analysis.channels import analyze_channels
from ..analysis.layer_calls import tap_layer_inputs
from ..analysis.stats import model_stats
from ..reports import PassLog, QuantizationReport
from .config import (
    CONFIG_VERSION,
    Fp16,
    Int8Static,
    Int8WeightOnly,
    QuantizationConfig,
    QuantizationError,
    scheme_name,
)


@dataclass
class _Quantized:
    """What a scheme's handler produced: the module, and what the report says of it."""

    mod: object
    passes: PassLog
    graph: object = None  # the channel analysis of the module quantized (its layers)
    reference: object = None  # the float module outputs are compared with (default: the input)
    scales: dict | None = None
    layer_sqnr: dict | None = None
    kept_float: list = field(default_factory=list)
    kernels: dict | None = None
    finish: Callable | None = None  # (module, PassLog) -> module, after accuracy is measured
    per_token: list | None = None  # int8 layers with per-row (token) activation scales
    smoothed: list | None = None  # int8 layers with SmoothQuant factors folded in
    baseline_sqnr: dict | None = None  # layer SQNR with static per-tensor scales, unsmoothed


HANDLERS: dict[type, Callable] = {}


def register_quantize_handler(config_type: type):
    """Register the function that applies one scheme's config (torchao's pattern):
    handler(mod, config, context) -> _Quantized; dispatched by HANDLERS[type(config)]."""

    def register(handler):
        HANDLERS[config_type] = handler
        return handler

    return register


@dataclass(frozen=True)
class _Context:
    data: object  # Calibration
    device: str
    target: object
    say: Callable


@register_quantize_handler(Int8WeightOnly)
def _int8_weight_only(mod, config: Int8WeightOnly, ctx: _Context) -> _Quantized:
    ran = PassLog()
    quantized = ran.run(QuantizeWeightsInt8(per_channel=config.per_channel), mod)
    # The int8 -> float decode fuses into its consumer once measured (a build-time rewrite).
    return _Quantized(quantized, ran, finish=lambda m, log: log.run(FuseDecodeIntoConsumer(), m))


@register_quantize_handler(Fp16)
def _fp16(mod, config: Fp16, ctx: _Context) -> _Quantized:
    if ctx.device != "cuda":
        raise QuantizationError(
            "fp16 is for CUDA presets (CPUs here have no fast fp16 arithmetic); use int8-weight or int8 for CPU targets"
        )
    # float16 tensors and weights, float32 accumulation in conv/matmul (TVM's pass);
    # measured on this machine's CPU: the same arithmetic the GPU does.
    ran = PassLog()
    mixed = ran.run(relax.transform.ToMixedPrecision(out_dtype="float32"), mod)
    return _Quantized(ran.run(relax.transform.FoldConstant(), mixed), ran)


@register_quantize_handler(Int8Static)
def _int8_static(mod, config: Int8Static, ctx: _Context) -> _Quantized:
    if ctx.data is None:
        raise QuantizationError("--quantize int8 calibrates activations: pass --calibration-data FILE.npz")
    ran, reference = PassLog(), mod
    packed = packed_int8_for(ctx.target)
    if packed is not None:
        mod = to_nhwc(mod, ran)
    graph = analyze_channels(mod)
    ctx.say(f"quantization: calibrating {len(graph.layers)} layers on {ctx.data.source} ({config.observer})")
    plan = calibrate(mod, graph, ctx.data.samples, config, packed.weight_max if packed else 127)
    kept_float = sorted(
        name for name, db in plan.sqnr_db.items()
        if config.min_layer_sqnr_db is not None and db is not None and db < config.min_layer_sqnr_db
    )
    layers = {k: v for k, v in plan.scales.items() if k not in kept_float}
    per_token = [k for k in plan.per_token if k in layers]
    static_scales = {k: v for k, v in plan.scales.items() if k not in plan.per_token}
    extra = {"per_token": per_token, "smoothed": sorted(k for k in plan.smoothing if k in layers),
             "baseline_sqnr": plan.baseline_sqnr_db}
    if not layers:  # all float: the graph as it came, no pass ran
        return _Quantized(reference, PassLog(), graph, reference, static_scales, plan.sqnr_db, kept_float,
                          kernels_report(packed, reference), **{**extra, "smoothed": []})
    smoothing = {k: v for k, v in plan.smoothing.items() if k in layers}
    if smoothing:
        mod = ran.run(SmoothLayerInputs(smoothing), mod)
    quantized = ran.run(QuantizeLayersInt8(layers, per_channel=config.per_channel, packed=packed, per_token=per_token), mod)
    quantized = ran.run(FoldBiasIntoInt32(), quantized)
    if smoothing or per_token:
        # Layers reading one tensor (Q/K/V) with the same smoothing share one quantize (and
        # one row-scale reduction): the rewrite wrote one per layer.
        quantized = ran.run(relax.transform.EliminateCommonSubexpr(), quantized)
        quantized = ran.run(relax.transform.CanonicalizeBindings(), quantized)
    return _Quantized(quantized, ran, graph, reference, static_scales, plan.sqnr_db, kept_float,
                      kernels_report(packed, quantized), **extra)


def quantize_graph(mod, config: QuantizationConfig, inputs, calibration=None, progress=None, device: str = "cpu",
                   target=None) -> tuple[object, QuantizationReport]:
    """Quantize the optimized module with the scheme `config` names; measure it against float.

    target: the tvm Target built for; where it has an int8 dot-product instruction, int8
    layers run packed kernels that use it (see kernels/select.py)."""
    started = time.monotonic()
    say = progress.message if progress is not None else (lambda text: None)
    handler = HANDLERS.get(type(config))
    if handler is None:
        raise QuantizationError(f"no quantization handler for {type(config).__name__}")
    if config.max_accuracy_drop is not None and calibration is None:
        raise QuantizationError("--max-accuracy-drop needs --calibration-data FILE.npz to measure accuracy on")
    before = model_stats(mod)
    done = handler(mod, config, _Context(calibration, device, target, say))
    data = calibration or random_calibration(inputs)
    reference = HostModel(done.reference if done.reference is not None else mod, "measure quantization").run(data.samples)
    outputs = HostModel(done.mod, "measure quantization").run(data.samples)
    accuracy = accuracy_report(reference, outputs, data)
    if config.max_accuracy_drop is not None and accuracy["drop"] > config.max_accuracy_drop + 1e-9:
        raise QuantizationError(
            f"quantization costs {accuracy['drop']:.2f} points of {accuracy['metric']} on {data.source}, more than "
            f"--max-accuracy-drop {config.max_accuracy_drop:g}"
            + ("; try --activations auto" if getattr(config, "activations", None) == "static"
               else "; try --observer percentile" if getattr(config, "observer", None) == "minmax" else "")
        )
    after = model_stats(done.mod)
    quantized = done.finish(done.mod, done.passes) if done.finish is not None else done.mod
    graph = done.graph if done.graph is not None else analyze_channels(mod)
    report = QuantizationReport(
        passes=list(done.passes),
        scheme=scheme_name(config),
        config={**asdict(config), "type": type(config).__name__, "version": CONFIG_VERSION},
        layers=[layer.name for layer in graph.layers],
        activation_scales=None if done.scales is None else {k: float(v) for k, v in done.scales.items()},
        per_token_layers=done.per_token,
        smoothed_layers=done.smoothed,
        layer_sqnr_db=done.layer_sqnr,
        layer_sqnr_static_db=done.baseline_sqnr,
        kept_float=done.kept_float,
        kernels=done.kernels,
        before=before.to_json(),
        after=after.to_json(),
        accuracy=accuracy,
        seconds=round(time.monotonic() - started, 2),
    )
    say(
        f"quantization: {report.scheme}, weight bytes {before.weight_bytes:,} -> {after.weight_bytes:,}, "
        f"output SQNR {', '.join(f'{s:.1f}' if s is not None else 'inf' for s in accuracy['output_sqnr_db'])} dB, "
        f"{accuracy['metric']} {accuracy['before']:.2f} -> {accuracy['after']:.2f} on {data.source}"
    )
    return quantized, report


def quantize_qdq_model(mod, inputs, progress=None, target=None) -> tuple[object, QuantizationReport | None]:
    """A QDQ model's quantized layers onto int8 compute; (module, report) or (module, None)
    when the model has no QDQ layers."""
    from .qdq import qdq_input_params, qdq_input_scales

    scales = qdq_input_scales(mod)
    if not scales:
        return mod, None
    ran = PassLog()
    packed = packed_int8_for(target)
    graph = to_nhwc(mod, ran) if packed is not None else mod
    layers = QuantizeLayersInt8(scales, packed=packed, asymmetric=qdq_input_params(mod))
    quantized = ran.run(FoldBiasIntoInt32(), ran.run(layers, graph))
    data = random_calibration(inputs)
    reference = HostModel(mod, "measure the QDQ model").run(data.samples)
    accuracy = accuracy_report(reference, HostModel(quantized, "measure the QDQ model").run(data.samples), data)
    report = QuantizationReport(
        passes=list(ran),
        scheme="qdq-int8",
        config={"type": "QDQ", "version": CONFIG_VERSION, "source": "the model's QuantizeLinear/DequantizeLinear"},
        layers=sorted(scales),
        activation_scales=scales,
        kernels=kernels_report(packed, quantized),
        before=model_stats(mod).to_json(),
        after=model_stats(quantized).to_json(),
        accuracy={**accuracy, "reference": "the model run as float between its Q/DQ pairs"},
    )
    if progress is not None:
        progress.message(f"quantization: QDQ model, {len(scales)} layers on int8 compute (scales from the model)")
    return quantized, report


def kernels_report(packed, quantized) -> dict:
    """For the manifest: the instruction the packed int8 kernels use and which layers have them."""
    suffix = "_" + PACKED_SUFFIX
    return {
        "intrinsic": packed.intrinsic if packed else None,
        "packed": packed is not None,
        "weight_max": packed.weight_max if packed else 127,
        "packed_layers": sorted(
            gv.name_hint[: -len(suffix)] for gv, _ in quantized.functions_items() if gv.name_hint.endswith(suffix)
        ),
    }


def to_nhwc(mod, ran: PassLog):
    """conv2d in NHWC/OHWI (the packed kernels read 4 consecutive channels as one word);
    elementwise ops and pooling follow, transposes only where the layout has to change."""
    nhwc = ran.run(relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]}), mod)
    return ran.run(relax.transform.FoldConstant(), nhwc)


@dataclass
class Calibrated:
    """What calibration decided per layer."""

    scales: dict  # {layer: per-tensor scale of its input (smoothed, where it is)}; per-token layers too
    per_token: list  # layers whose input gets one scale per row at run time
    smoothing: dict  # {layer: one factor per input channel} (SmoothQuant)
    sqnr_db: dict  # {layer: estimated int8 SQNR with what was chosen}
    baseline_sqnr_db: dict  # {layer: the same estimate, static per-tensor scale and no smoothing}


MEASURED_ROWS = 1024  # calibration rows a matmul layer's int8 output is measured on


def calibrate(mod, graph, samples, config: Int8Static, weight_max: int = 127) -> Calibrated:
    """Per layer: how its input is quantized and how well that does.

    Static scales are one per tensor: max|x| (minmax), a percentile of |x| or the entropy
    threshold. Matmul layers take per-row (token) scales at run time where
    config.activations asks for them, and SmoothQuant factors where config.smooth_alpha is
    set and smoothing raises their SQNR; matmul layers that read the same tensor (a
    transformer's Q/K/V projections) share one set of factors, so they share one quantize.
    Each layer's SQNR: matmul layers, of the layer's output x @ W against int8 x by int8 W
    on (up to MEASURED_ROWS) calibration rows; conv2d layers, estimated from input and
    weight rounding (and clipping) noise, taken as independent, 1/SQNR = 1/SQNR_input +
    1/SQNR_weight."""
    tapped = tap_layer_inputs(mod, graph)
    runs = HostModel(tapped, "calibrate activations").run(samples)
    num_outputs = len(runs[0]) - len(graph.layers)
    out = Calibrated({}, [], {}, {}, {})
    readers: dict = {}  # the tensor a matmul reads -> its layers (SmoothQuant groups)
    for i, layer in enumerate(graph.layers):
        call = graph.bindings[layer.slot[0]].value
        weight = call.args[1].value.numpy()
        x = np.concatenate([r[num_outputs + i].reshape(-1) for r in runs])
        if layer.op == "matmul":
            readers.setdefault(call.args[0], []).append((layer, x.reshape(-1, weight.shape[0]), weight, call))
            continue
        scale = _observe(np.abs(x), config)
        out.scales[layer.name] = scale
        db = _estimated_sqnr_db(x, scale, weight, layer.out_axis, config.per_channel, weight_max)
        out.sqnr_db[layer.name] = out.baseline_sqnr_db[layer.name] = db
    for group in readers.values():
        _calibrate_matmuls(group, config, weight_max, out)
    order = [layer.name for layer in graph.layers]  # the report lists layers in graph order
    for name in ("scales", "sqnr_db", "baseline_sqnr_db"):
        setattr(out, name, {k: getattr(out, name)[k] for k in order})
    return out


def _calibrate_matmuls(group, config: Int8Static, weight_max: int, out: Calibrated) -> None:
    """Matmul layers reading one tensor: per-tensor or per-row scales, with or without
    shared SmoothQuant factors (kept where the layers' mean SQNR rises)."""
    rows, call = group[0][1], group[0][3]
    per_token = config.activations == "dynamic" or (config.activations == "auto" and _rows_per_call(call) > 1)
    measured = _evenly(rows, MEASURED_ROWS)
    exact = [measured.astype(np.float64) @ weight.astype(np.float64) for _, _, weight, _ in group]
    static = _observe(np.abs(rows).reshape(-1), config)

    def sqnr(x, weights, scale):
        return [_matmul_sqnr_db(x, w, scale, config.per_channel, weight_max, y) for w, y in zip(weights, exact)]

    weights = [weight for _, _, weight, _ in group]
    baseline = sqnr(measured, weights, static)
    scale = None if per_token else static
    chosen = sqnr(measured, weights, None) if per_token else baseline
    factors = None
    if config.smooth_alpha is not None:
        from ..passes.quantize_int8 import smoothing_factors

        s = smoothing_factors(np.abs(rows).max(axis=0), np.concatenate(weights, axis=1), config.smooth_alpha)
        smoothed_scale = None if per_token else _observe(np.abs(rows / s).reshape(-1), config)
        smoothed = sqnr(measured / s, [(w.astype(np.float64) * s[:, None]).astype(np.float32) for w in weights],
                        smoothed_scale)
        if np.mean(smoothed) > np.mean(chosen):
            scale, chosen, factors = smoothed_scale, smoothed, s
    for (layer, *_), db, base in zip(group, chosen, baseline):
        out.scales[layer.name] = scale if scale is not None else static
        if per_token:
            out.per_token.append(layer.name)
        if factors is not None:
            out.smoothing[layer.name] = factors
        out.sqnr_db[layer.name], out.baseline_sqnr_db[layer.name] = _rounded_db(db), _rounded_db(base)


def _observe(values: np.ndarray, config: Int8Static) -> float:
    """The per-tensor scale of |x| values: max, a percentile, or the entropy threshold, / 127."""
    if config.observer == "minmax":
        peak = values.max()
    elif config.observer == "percentile":
        peak = np.percentile(values, config.percentile)
    else:
        peak = entropy_threshold(values)
    return float(peak / 127.0) if peak > 0 else 1.0


def _rows_per_call(call) -> int:
    """Rows of a matmul's input per call ([B, T, K] -> B*T); 1 where its shape is not static."""
    from ..analysis.channels import static_shape

    shape = static_shape(call.args[0])
    return int(np.prod(shape[:-1])) if shape else 1


def _evenly(rows: np.ndarray, count: int) -> np.ndarray:
    return rows if len(rows) <= count else rows[np.linspace(0, len(rows) - 1, count).astype(int)]


def _fake_int8(x: np.ndarray, scale) -> np.ndarray:
    """x rounded as int8 does: one scale per tensor, or (scale None) one per row."""
    if scale is None:
        scale = np.maximum(np.abs(x).max(axis=-1, keepdims=True), 1e-12) / 127.0
    return np.clip(np.round(x / scale), -128, 127) * scale


def _matmul_sqnr_db(rows, weight, scale, per_channel, weight_max, exact) -> float:
    """SQNR of int8(rows) @ int8(weight) against the float product `exact`."""
    from ..passes.quantize_int8 import quantize_weight

    q, s_w = quantize_weight(weight, 1, per_channel, weight_max)
    return sqnr_db(exact, _fake_int8(rows.astype(np.float64), scale) @ (q.astype(np.float64) * s_w))


def _estimated_sqnr_db(x, scale, weight, out_axis, per_channel, weight_max) -> float | None:
    from ..passes.quantize_int8 import quantize_weight

    q, s_w = quantize_weight(weight, out_axis, per_channel, weight_max)
    x_db = sqnr_db(x, _fake_int8(x, scale))
    w_db = sqnr_db(weight, q * s_w)
    combined = 1.0 / (10 ** (-x_db / 10) + 10 ** (-w_db / 10)) if np.isfinite(x_db) or np.isfinite(w_db) else np.inf
    return _rounded_db(10 * np.log10(combined)) if np.isfinite(combined) else None


def _rounded_db(db: float) -> float | None:
    return round(float(db), 2) if np.isfinite(db) else None


def entropy_threshold(values: np.ndarray, bins: int = 2048, levels: int = 128) -> float:
    """The clipping threshold for |x| that loses the least information in int8: TensorRT's
    entropy calibration. For each candidate threshold (a bin edge), the
    histogram up to it, with everything beyond added to its last bin, is compared by KL
    divergence with the same histogram merged into `levels` int8 steps and spread back
    over the non-empty bins."""
    # Exact zeros (half of every post-ReLU tensor) are exact in int8 at any threshold; in
    # the histogram their spike would dominate the divergence and pull the threshold down.
    values = values[values > 0]
    peak = float(values.max()) if values.size else 0.0
    if peak <= 0:
        return 0.0
    hist, edges = np.histogram(values, bins=bins, range=(0.0, peak))
    hist = hist.astype(np.float64)
    # KL alone can pick a threshold that clips most of a discrete distribution (8-bit
    # pixels: a handful of spikes, each "lossless" in its own bin), so candidates start
    # where at most 1 % of the non-zero values would be clipped.
    first = max(levels, int(np.searchsorted(np.cumsum(hist), 0.99 * hist.sum())) + 1)
    best, best_kl = bins, np.inf
    for i in range(min(first, bins), bins + 1):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        nonzero = hist[:i] != 0
        # Merge i bins into `levels` groups; spread each group's count over its non-empty bins.
        group = (np.arange(i) * levels) // i
        sums = np.bincount(group, weights=hist[:i], minlength=levels)
        counts = np.bincount(group, weights=nonzero, minlength=levels)
        q = np.where(nonzero, sums[group] / np.maximum(counts[group], 1), 0.0)
        p_sum, q_sum = p.sum(), q.sum()
        if p_sum == 0 or q_sum == 0:
            continue
        p, q = p / p_sum, q / q_sum
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best_kl:
            best, best_kl = i, kl
    return float(edges[best])
