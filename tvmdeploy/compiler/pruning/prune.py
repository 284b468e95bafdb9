"""Pruning, top to bottom: rank, (scan sensitivity and pick per-layer ratios), rewrite, report.

`prune_graph` takes the optimized Relax module (BatchNorm already folded, weights are
constants) and returns the pruned module plus the report that goes into the manifest.
Candidate plans are judged on a model built once with its weights as parameters
(`WeightEditableModel`): each plan is a set of numpy weight edits that reproduce the
pruned model's outputs exactly, so a scan costs inference passes, not builds.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np

from ..budget_search import greedy_search
from ..calibration import Calibration, accuracy_report, random_calibration
from ..passes.prune_channels import PruneChannels
from ..passes.prune_magnitude import PruneMagnitude, magnitude_masks
from ..analysis.channels import kept_indices
from .config import (
    CONFIG_VERSION,
    RATIO_GRID,
    MagnitudePruning,
    PruningConfig,
    PruningError,
    StructuredPruning,
    scheme_name,
)
from ..reports import PassLog, PruningReport
from .evaluate import WeightEditableModel
from ..analysis.stats import model_stats


class _Scorer:
    """Drop in top-1 points (accuracy with labels, else agreement with the unpruned model)."""

    def __init__(self, model: WeightEditableModel, calibration: Calibration):
        self.model, self.calibration = model, calibration
        self.reference = model.run(model.weights, calibration.samples)
        self.evaluations = 0

    def drop(self, weights) -> tuple[float, list]:
        self.evaluations += 1
        outputs = self.model.run(weights, self.calibration.samples)
        return accuracy_report(self.reference, outputs, self.calibration)["drop"], outputs

    @property
    def metric(self) -> str:
        return "top1_accuracy" if self.calibration.labels is not None else "top1_agreement"

    def report(self, outputs) -> dict:
        return accuracy_report(self.reference, outputs, self.calibration)


# One planner per scheme, looked up by the config's type: a planner turns per-layer ratios
# into numpy weight edits (for the scan) and into the rewritten module (apply).
PLANNERS: dict[type, type] = {}


def register_pruning_planner(config_type: type):
    def register(planner: type) -> type:
        PLANNERS[config_type] = planner
        return planner

    return register


def prune_graph(mod, config: PruningConfig, inputs, calibration: Calibration | None = None, progress=None,
                channel_multiple: int = 1):
    """Prune the optimized module. Returns (pruned module, report for the manifest).
    channel_multiple: structured pruning keeps channel counts at multiples of it (the
    block of the kernels that follow)."""
    started = time.monotonic()
    if config.max_accuracy_drop is not None and calibration is None:
        raise PruningError("--max-accuracy-drop needs --calibration-data FILE.npz to measure accuracy on")
    say = progress.message if progress is not None else (lambda text: None)
    before = model_stats(mod)
    model = WeightEditableModel(mod, len(inputs))
    scorer = _Scorer(model, calibration or random_calibration(inputs))
    planner = PLANNERS.get(type(config))
    if planner is None:
        raise PruningError(f"no pruner for {type(config).__name__}")
    plan = planner(model, config)
    plan.channel_multiple = channel_multiple

    sensitivity = []
    searching = config.ratio is None and getattr(config, "alpha", None) is None
    if searching:
        say(f"pruning: sensitivity scan of {len(plan.knobs)} layers x {len(RATIO_GRID)} ratios on {scorer.calibration.source}")
        ratios = _search(plan, scorer, config.max_accuracy_drop, sensitivity)
    else:
        ratios = plan.fixed_ratios()
    drop, outputs = scorer.drop(plan.weights(ratios))
    accuracy = scorer.report(outputs)
    if config.max_accuracy_drop is not None and drop > config.max_accuracy_drop + 1e-9:
        raise PruningError(
            f"pruning costs {drop:.2f} points of {scorer.metric} on {scorer.calibration.source}, more than "
            f"--max-accuracy-drop {config.max_accuracy_drop:g}; use a smaller ratio, or drop the ratio to let "
            f"the sensitivity scan pick per-layer ratios"
        )
    ran = PassLog()
    pruned = plan.apply(mod, ratios, ran)
    after = model_stats(pruned)
    report = PruningReport(
        passes=list(ran),
        scheme=scheme_name(config),
        config={**asdict(config), "type": type(config).__name__, "version": CONFIG_VERSION},
        layers=plan.layer_report(ratios),
        skipped=plan.skipped(),
        before=before.to_json(),
        after=after.to_json(),
        accuracy=accuracy,
        sensitivity=sensitivity,
        evaluations=scorer.evaluations,
        seconds=round(time.monotonic() - started, 2),
        stores_weights_apart=plan.stores_weights_apart,
    )
    say(
        f"pruning: {report.scheme}, MACs {before.macs:,} -> {after.macs:,}, non-zero params "
        f"{before.nonzero_params:,} -> {after.nonzero_params:,}, {scorer.metric} {accuracy['before']:.2f} -> "
        f"{accuracy['after']:.2f} on {scorer.calibration.source}"
    )
    return pruned, report


def _search(plan, scorer: _Scorer, budget: float, table: list) -> dict:
    """Per-layer ratios from the sensitivity scan and the greedy (budget_search)."""
    chosen = greedy_search(plan, lambda ratios: scorer.drop(plan.weights(ratios))[0], budget, table, "ratio")
    return {knob: chosen.get(knob, 0.0) for knob in plan.knobs}


@register_pruning_planner(StructuredPruning)
class _StructuredPlan:
    stores_weights_apart = False  # fewer channels: smaller constants, embedded as before
    channel_multiple = 1  # kept channels a multiple of this (set for packed int8 kernels)

    def __init__(self, model: WeightEditableModel, config: StructuredPruning):
        self.model, self.config = model, config
        self.graph = model.graph
        self.groups = {g.name: g for g in self.graph.prunable()}
        self.knobs = list(self.groups)
        self.order = {}  # group name -> channel indices, least important first
        for name, group in self.groups.items():
            score = np.zeros(group.channels)
            for layer in group.producers:
                w = np.moveaxis(model.layer_weight(layer), layer.out_axis, 0).reshape(group.channels, -1)
                score += np.abs(w).sum(axis=1) if config.norm == "l1" else np.sqrt((w.astype(np.float64) ** 2).sum(axis=1))
            self.order[name] = np.argsort(score, kind="stable")
        self._macs = {}

    def fixed_ratios(self) -> dict:
        return {k: self.config.ratio for k in self.knobs}

    def removed(self, channels: int, ratio: float) -> int:
        """Channels a ratio removes; the kept count rounded up to a multiple of
        `channel_multiple` where the layer had one (packed int8 kernels take output
        channels in blocks of 16 on x86, 4 on ARM; a pruned layer off the block runs a
        generic kernel, slower than the unpruned one)."""
        remove = min(int(np.floor(ratio * channels + 1e-9)), channels - 1)
        m = self.channel_multiple
        if m > 1 and channels % m == 0:
            remove = channels - min(channels, -(-(channels - remove) // m) * m)
        return remove

    def grid(self, knob) -> tuple:
        return RATIO_GRID

    def keep(self, ratios: dict) -> dict:
        """group id -> kept channels, for the groups that lose any."""
        out = {}
        for name, ratio in ratios.items():
            group = self.groups[name]
            remove = self.removed(group.channels, ratio)
            if remove > 0:
                out[group.id] = np.sort(self.order[name][remove:])
        return out

    def weights(self, ratios: dict) -> list[np.ndarray]:
        return self.edit(list(self.model.weights), ratios)

    def edit(self, weights: list[np.ndarray], ratios: dict) -> list[np.ndarray]:
        """The weights with the removed channels zeroed: in every consumer's input (which
        gives the pruned model's outputs) and in the producers' outputs (so what later
        edits compute from a producer's weight is what they would from the pruned one)."""
        keep = self.keep(ratios)
        weights = list(weights)
        for group in self.groups.values():
            kept = keep.get(group.id)
            if kept is None:
                continue
            removed = np.setdiff1d(np.arange(group.channels), kept)
            for layer in group.producers:
                index = self.model.slot_param[layer.slot]
                w = weights[index].copy()
                index_tuple = [slice(None)] * w.ndim
                index_tuple[layer.out_axis] = removed
                w[tuple(index_tuple)] = 0
                weights[index] = w
        done = set()
        for group in self.groups.values():
            for consumer in group.consumers:
                layer = consumer.layer
                if layer.name in done or not (consumer.state.groups & set(keep)):
                    continue
                done.add(layer.name)
                index = self.model.slot_param[layer.slot]
                total = weights[index].shape[layer.in_axis]
                removed = np.setdiff1d(np.arange(total), kept_indices(consumer.state, keep))
                w = weights[index].copy()
                index_tuple = [slice(None)] * w.ndim
                index_tuple[layer.in_axis] = removed
                w[tuple(index_tuple)] = 0
                weights[index] = w
        return weights

    def apply(self, mod, ratios: dict, ran: PassLog):
        keep = self.keep(ratios)
        names = {g.id: g.producers[0].name for g in self.groups.values()}
        return ran.run(PruneChannels({names[gid]: channels for gid, channels in keep.items()}), mod) if keep else mod

    def saving(self, knob: str, ratio: float) -> int:
        """MACs saved by pruning this group alone at `ratio`."""
        key = (knob, ratio)
        if key not in self._macs:
            if ratio == 0:
                self._macs[key] = 0
            else:
                group = self.groups[knob]
                c = group.channels
                remove = self.removed(c, ratio)
                # Producers and consumers both shrink linearly in this group's channels.
                per_channel = sum(_layer_macs(self.graph, p) for p in group.producers) / c
                per_channel += sum(_consumer_share(self.graph, cons, group.id) for cons in group.consumers)
                self._macs[key] = int(remove * per_channel)
        return self._macs[key]

    def bytes_saved(self, knob: str, ratio: float) -> int:
        """Weight bytes removed by pruning this group alone at `ratio` (producers' rows and
        consumers' input slices)."""
        if not ratio:
            return 0
        group = self.groups[knob]
        c = group.channels
        remove = self.removed(c, ratio)
        per_channel = sum(int(np.prod(p.weight_shape)) * 4 / c for p in group.producers)
        for consumer in group.consumers:
            total = sum(n * r for _, n, r in consumer.state.segments)
            per = sum(r for g, _, r in consumer.state.segments if g == group.id)
            per_channel += int(np.prod(consumer.layer.weight_shape)) * 4 * per / total
        return int(remove * per_channel)

    def layer_report(self, ratios: dict) -> list:
        keep = self.keep(ratios)
        rows = []
        for name, group in self.groups.items():
            kept = keep.get(group.id)
            rows.append({
                "layer": name, "channels_before": group.channels,
                "channels_after": group.channels if kept is None else len(kept),
                "ratio": ratios.get(name, 0.0),
                "kept_channels": None if kept is None else [int(c) for c in kept],
                "consumers": sorted({c.layer.name for c in group.consumers}),
            })
        return rows

    def skipped(self) -> list:
        return [{"layer": g.name, "reason": g.blocked} for g in self.graph.groups if g.blocked is not None]


def _layer_macs(graph, layer) -> int:
    binding = graph.bindings[layer.slot[0]]
    out = [int(d) for d in binding.var.ty.shape.values]
    w = layer.weight_shape
    if layer.op == "conv2d":
        return int(np.prod(out)) * int(np.prod(w[1:]))
    return int(np.prod(out)) * w[0]


def _consumer_share(graph, consumer, group_id: int) -> float:
    """MACs of the consumer per input channel of this group (a flattened channel feeds
    several input features)."""
    total = sum(n * r for _, n, r in consumer.state.segments)
    per = sum(r for g, _, r in consumer.state.segments if g == group_id)
    return _layer_macs(graph, consumer.layer) * per / total


@register_pruning_planner(MagnitudePruning)
class _MagnitudePlan:
    stores_weights_apart = True  # zeros compress: the weights go beside the library

    def __init__(self, model: WeightEditableModel, config: MagnitudePruning):
        self.model, self.config = model, config
        self.layers = {layer.name: layer for layer in model.graph.layers}
        self.knobs = list(self.layers)
        self.arrays = {name: model.layer_weight(layer) for name, layer in self.layers.items()}

    def fixed_ratios(self) -> None:
        return None  # the config's own ratio/scope/alpha

    def grid(self, knob) -> tuple:
        return RATIO_GRID

    def masks(self, ratios: dict | None) -> dict:
        if ratios is None:
            return magnitude_masks(self.arrays, self.config.ratio, self.config.scope, self.config.alpha)
        return magnitude_masks(self.arrays, ratios)

    def weights(self, ratios: dict | None) -> list[np.ndarray]:
        return self.edit(list(self.model.weights), ratios)

    def edit(self, weights: list[np.ndarray], ratios: dict | None) -> list[np.ndarray]:
        weights = list(weights)
        for name, mask in self.masks(ratios).items():
            index = self.model.slot_param[self.layers[name].slot]
            weights[index] = np.where(mask, weights[index], 0).astype(weights[index].dtype)
        return weights

    def apply(self, mod, ratios: dict, ran: PassLog):
        return ran.run(PruneMagnitude(self.masks(ratios)), mod)

    def saving(self, knob: str, ratio: float) -> int:
        return int(self.arrays[knob].nbytes * ratio)

    def layer_report(self, ratios: dict) -> list:
        rows = []
        for name, mask in self.masks(ratios).items():
            rows.append({
                "layer": name, "weights": int(mask.size), "zeros": int(mask.size - np.count_nonzero(mask)),
                "ratio": round(1 - np.count_nonzero(mask) / mask.size, 4),
            })
        return rows

    def skipped(self) -> list:
        return []
