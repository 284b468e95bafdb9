"""Shrinking the optimized graph, always in one order:

    prune -> low-rank -> cluster -> quantize (int8 / int8-weight / fp16)

Structured pruning removes channels first (later steps see the smaller layers),
low-rank factors what is left, clustering shares the values of the (factored) weights,
and int8 comes last (a clustered weight's shared values stay shared in int8).

One method, or several without a budget: each runs in turn (a method given its own
--max-accuracy-drop gates itself). Several methods under one --max-accuracy-drop, or
any --compress with a budget: one search spends the budget across all of them
(`_joint`): the int8 cost is measured first and set aside, then a sensitivity scan
over every (method, layer) knob and a greedy pass by stored bytes saved per point
lost pick the per-layer levels; the result is measured against the original model,
and a combination over budget gives no artifact. In a search, a layer is either
factored or clustered, never both, so the two commute.

Every step adds a row to the table users judge by (`SizeAccuracyTable`): parameters,
non-zero parameters, stored bytes, MACs, accuracy (or agreement) and output SQNR.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from ...errors import TvmDeployError
from ..reports import CompressionReport, PassLog, PruningReport, QuantizationReport, SizeAccuracyTable

ORDER = ("prune", "lowrank", "cluster", "quantize")


@dataclass
class ShrunkGraph:
    mod: object
    pruning: PruningReport | None = None
    compression: CompressionReport | None = None
    quantization: QuantizationReport | None = None
    table: SizeAccuracyTable | None = None
    weights: list | None = None  # weights to store beside the library (None: embedded)


def shrink_graph(
    mod, inputs, prune=None, quantize=None, calibration_data=None, device="cpu", progress=None, target=None,
    compress=(), max_accuracy_drop=None,
) -> ShrunkGraph:
    """Pruning, compression and quantization of the optimized graph, the same for compile
    and tune (so tuning sees the kernels the artifact will have)."""
    from ..compression.config import CompressionError

    compress = _ordered(compress)
    asked = [c for c in (prune, *compress, quantize) if c is not None]
    calibration = None
    if calibration_data is not None:
        if not asked:
            raise TvmDeployError("--calibration-data is for --prune, --compress and --quantize; none was asked for")
        from ..calibration import load_calibration

        calibration = load_calibration(calibration_data, inputs)
    budgets = [c.max_accuracy_drop for c in asked if c.max_accuracy_drop is not None]
    budget = max_accuracy_drop if max_accuracy_drop is not None else (min(budgets) if budgets else None)
    if budget is not None and calibration is None:
        raise CompressionError("--max-accuracy-drop needs --calibration-data FILE.npz to measure accuracy on")
    if not asked:
        return _qdq_only(mod, inputs, progress, target)
    say = progress.message if progress is not None else (lambda text: None)
    from ..calibration import random_calibration

    data = calibration or random_calibration(inputs)
    table = SizeAccuracyTable(data=data.source)
    steps = _Steps(mod, data, table, say)
    if budget is not None and (compress or len(asked) > 1):
        shrunk = _joint(mod, inputs, prune, compress, quantize, calibration, device, progress, target, budget, steps)
    else:
        shrunk = _in_turn(mod, inputs, prune, compress, quantize, calibration, device, progress, target, steps)
    shrunk.table = table
    apart = _weights_apart(shrunk, compress)
    table.finish(apart)
    say(table.text())
    if apart:
        from .._tvm import relax
        from ..pruning.lift import lift_weights

        # Fold what is computed from weights (int8 zero-point corrections, packed
        # layouts) while they are still constants: as parameters it would run per call.
        shrunk.mod, shrunk.weights = lift_weights(relax.transform.FoldConstant()(shrunk.mod))
    return shrunk


def channel_block(quantize, target) -> int:
    """The output-channel block of the kernels the quantized layers will run (1: none):
    pruning and low-rank keep channel counts and ranks at its multiples."""
    if quantize is None or type(quantize).__name__ != "Int8Static":
        return 1
    from ..kernels.select import packed_int8_for

    packed = packed_int8_for(target)
    return packed.lanes if packed is not None else 1


def _weights_apart(shrunk: ShrunkGraph, compress) -> bool:
    """Weights travel beside the library when they compress there: magnitude-pruned
    zeros, or clustered values (when the search clustered at least one layer)."""
    if shrunk.pruning is not None and shrunk.pruning.stores_weights_apart:
        return True
    if shrunk.compression is None or not any(c.__class__.__name__ == "Clustering" for c in compress):
        return False
    return any(row.get("bits") for row in shrunk.compression.layers.get("cluster", []))


def _ordered(compress) -> list:
    from ..compression.config import SCHEMES, CompressionError, scheme_name

    compress = list(compress or ())
    names = [scheme_name(c) for c in compress]
    for name in set(names):
        if names.count(name) > 1:
            raise CompressionError(f"--compress {name} is given twice; give each method once")
    order = list(SCHEMES)
    return sorted(compress, key=lambda c: order.index(scheme_name(c)))


def _qdq_only(mod, inputs, progress, target) -> ShrunkGraph:
    # A pre-quantized (QDQ) model: its quantized layers compute in int8, not as float
    # (a model without QuantizeLinear/DequantizeLinear comes back unchanged).
    from ..quantization.quantize import quantize_qdq_model

    mod, quantization = quantize_qdq_model(mod, inputs, progress, target)
    return ShrunkGraph(mod, quantization=quantization)


class _Steps:
    """One row of the table per step, measured against the original model. A step whose
    own report already measured it against the original (the first step) costs nothing
    more; later steps are built and run once on the same samples."""

    def __init__(self, original, data, table: SizeAccuracyTable, say):
        from ..analysis.stats import model_stats

        self.original, self.data, self.table, self.say = original, data, table, say
        self._reference = None
        self.first = True
        table.add("original", model_stats(original).to_json(), None)

    @property
    def reference(self):
        if self._reference is None:
            from ..host_eval import HostModel

            self._reference = HostModel(self.original, "measure the original model").run(self.data.samples)
        return self._reference

    def add(self, step: str, mod, accuracy: dict | None = None, outputs=None, stats: dict | None = None,
            same_macs: bool = False) -> dict:
        """accuracy: the step's own measurement, used when the step is the first; stats:
        the step's own ModelStats.to_json() (quantization measures before fusing decodes)."""
        from ..analysis.stats import model_stats
        from ..calibration import accuracy_report
        from ..host_eval import HostModel

        if accuracy is None or not self.first:
            if outputs is None:
                outputs = HostModel(mod, f"measure the model after {step}").run(self.data.samples)
            accuracy = accuracy_report(self.reference, outputs, self.data)
        self.first = False
        return self.table.add(step, stats or model_stats(mod).to_json(), accuracy, same_macs)


def _in_turn(mod, inputs, prune, compress, quantize, calibration, device, progress, target, steps) -> ShrunkGraph:
    shrunk = ShrunkGraph(mod)
    if prune is not None:
        from ..pruning.config import scheme_name
        from ..pruning.prune import prune_graph

        shrunk.mod, shrunk.pruning = prune_graph(
            shrunk.mod, prune, inputs, calibration, progress, channel_multiple=channel_block(quantize, target)
        )
        steps.add(f"prune {scheme_name(prune)}", shrunk.mod, shrunk.pruning.accuracy)
    if compress:
        shrunk.mod, shrunk.compression = _compress_fixed(shrunk.mod, compress, inputs, steps)
    if quantize is not None:
        from ..quantization.config import scheme_name
        from ..quantization.quantize import quantize_graph

        shrunk.mod, shrunk.quantization = quantize_graph(shrunk.mod, quantize, inputs, calibration, progress, device, target)
        steps.add(scheme_name(quantize), shrunk.mod, shrunk.quantization.accuracy, stats=shrunk.quantization.after, same_macs=True)
    return shrunk


def _compress_fixed(mod, compress, inputs, steps):
    """Each compression at the levels its config gives, in order, each on the last's result."""
    from ..compression.config import scheme_name
    from ..compression.plans import PLANS
    from ..pruning.evaluate import WeightEditableModel

    started, ran = time.monotonic(), PassLog()
    report = CompressionReport(methods=[scheme_name(c) for c in compress], config=[_config_json(c) for c in compress])
    for config in compress:
        model = WeightEditableModel(mod, len(inputs))
        covariances = layer_input_covariances(mod, model.graph, steps.data.samples) if config.__class__.__name__ == "LowRank" else None
        plan = PLANS[type(config)](model, config, covariances=covariances)
        levels = plan.fixed_levels()
        mod = _apply(plan, mod, levels, ran)
        report.layers[plan.method] = plan.layer_report(levels)
        report.skipped.extend({**s, "method": plan.method, "fixed": True} for s in plan.skipped)
        steps.add(scheme_name(config), mod)
    report.passes, report.seconds = list(ran), round(time.monotonic() - started, 2)
    return mod, report


def layer_input_covariances(mod, graph, samples) -> dict:
    """Per conv2d/matmul layer, the covariance of its input patches on the samples (what
    data-aware low-rank factors are fitted to)."""
    from ..analysis.layer_calls import tap_layer_inputs
    from ..compression.lowrank import covariance, input_rows
    from ..host_eval import HostModel

    runs = HostModel(tap_layer_inputs(mod, graph), "measure layer inputs for low-rank").run(samples)
    outputs = len(runs[0]) - len(graph.layers)
    return {
        layer.name: covariance([input_rows(r[outputs + i], layer, graph.bindings[layer.slot[0]].value) for r in runs])
        for i, layer in enumerate(graph.layers)
    }


def _apply(plan, mod, levels: dict, ran: PassLog, covariances: dict | None = None):
    from ..passes.cluster_weights import ClusterWeights
    from ..passes.factorize_lowrank import FactorizeLowRank

    if not levels:
        return mod
    if plan.method == "lowrank":
        return ran.run(FactorizeLowRank(levels, plan.covariances if covariances is None else covariances), mod)
    return ran.run(ClusterWeights(levels, plan.config.per_channel), mod)


def _config_json(config) -> dict:
    from ..compression.config import CONFIG_VERSION

    return {**dataclasses.asdict(config), "type": type(config).__name__, "version": CONFIG_VERSION}


def _joint(mod, inputs, prune, compress, quantize, calibration, device, progress, target, budget, steps) -> ShrunkGraph:
    from .joint import JointSearch

    search = JointSearch(mod, inputs, prune, compress, quantize, calibration, device, progress, target, budget, steps)
    return search.run()
