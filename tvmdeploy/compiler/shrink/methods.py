"""What the shrinking stages share: the result type, the table's rows, the compression
steps at fixed levels, and what data-aware low-rank needs measured."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from ..reports import (
    CompressionReport,
    PassLog,
    PruningReport,
    QuantizationReport,
    SizeAccuracyTable,
)


@dataclass
class ShrunkGraph:
    mod: object
    pruning: PruningReport | None = None
    compression: CompressionReport | None = None
    quantization: QuantizationReport | None = None
    table: SizeAccuracyTable | None = None
    weights: list | None = None  # weights to store beside the library (None: embedded)


def channel_block(quantize, target) -> int:
    """The output-channel block of the kernels the quantized layers will run (1: none):
    pruning and low-rank keep channel counts and ranks at its multiples."""
    if quantize is None or type(quantize).__name__ != "Int8Static":
        return 1
    from ..kernels.select import packed_int8_for

    packed = packed_int8_for(target)
    return packed.lanes if packed is not None else 1


class Steps:
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


def compress_fixed(mod, compress, inputs, steps):
    """Each compression at the levels its config gives, in order, each on the last's result."""
    from ..compression.config import scheme_name
    from ..compression.plans import PLANS
    from ..pruning.evaluate import WeightEditableModel

    started, ran = time.monotonic(), PassLog()
    report = CompressionReport(methods=[scheme_name(c) for c in compress], config=[config_json(c) for c in compress])
    for config in compress:
        model = WeightEditableModel(mod, len(inputs))
        covariances = layer_input_covariances(mod, model.graph, steps.data.samples) if config.__class__.__name__ == "LowRank" else None
        plan = PLANS[type(config)](model, config, covariances=covariances)
        levels = plan.fixed_levels()
        mod = apply_compression(plan, mod, levels, ran)
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


def apply_compression(plan, mod, levels: dict, ran: PassLog, covariances: dict | None = None):
    from ..passes.cluster_weights import ClusterWeights
    from ..passes.factorize_lowrank import FactorizeLowRank

    if not levels:
        return mod
    if plan.method == "lowrank":
        return ran.run(FactorizeLowRank(levels, plan.covariances if covariances is None else covariances), mod)
    return ran.run(ClusterWeights(levels, plan.config.per_channel), mod)


def config_json(config) -> dict:
    from ..compression.config import CONFIG_VERSION

    return {**dataclasses.asdict(config), "type": type(config).__name__, "version": CONFIG_VERSION}


