"""One accuracy budget spent across pruning, low-rank, clustering and int8 (see shrink.py).

1. Methods given fixed levels (structured:0.3, lowrank:0.25, cluster:4) run first, in order.
2. int8's own cost is measured on that model and set aside: it is the last step, and not
   a weight edit the scan could try cheaply.
3. Every other (method, layer) knob is scanned alone at every level, then the greedy
   (budget_search) raises the knob that saves the most stored bytes per point lost while
   the combination stays within what is left of the budget.
4. The chosen levels are applied (prune -> cluster -> low-rank: a layer is either
   clustered or factored, so the two commute), int8 runs, and the final model is measured
   against the original. Over budget: one retry with the search's budget cut by the
   excess, then an error (no artifact).
"""

from __future__ import annotations

import dataclasses
import time

from ..reports import CompressionReport, PassLog, PruningReport
from .methods import (
    ShrunkGraph,
    apply_compression,
    channel_block,
    compress_fixed,
    config_json,
    layer_input_covariances,
)

_EXCLUSIVE = ("lowrank", "cluster")


class JointPlan:
    """Several methods' plans as one: knobs are (method, layer); edits compose in order."""

    def __init__(self, plans: dict):
        self.plans = plans  # method -> plan, in edit order
        self.knobs = [(method, knob) for method, plan in plans.items() for knob in plan.knobs]

    def grid(self, knob):
        return self.plans[knob[0]].grid(knob[1])

    def saving(self, knob, level) -> float:
        """One method alone: its own unit (MACs for low-rank); several: stored bytes."""
        plan = self.plans[knob[0]]
        if len(self.plans) == 1 or not hasattr(plan, "bytes_saved"):
            return plan.saving(knob[1], level)
        return plan.bytes_saved(knob[1], level)

    def edit(self, weights, levels: dict):
        for method, plan in self.plans.items():
            mine = {name: level for (m, name), level in levels.items() if m == method}
            if mine:
                weights = plan.edit(weights, mine)
        return weights

    def excludes(self, knob):
        method, name = knob
        if method not in _EXCLUSIVE:
            return ()
        return [(other, name) for other in _EXCLUSIVE if other != method and other in self.plans]

    def split(self, levels: dict) -> dict:
        """method -> {layer: level}."""
        out = {method: {} for method in self.plans}
        for (method, name), level in levels.items():
            out[method][name] = level
        return out


class JointSearch:
    def __init__(self, mod, inputs, prune, compress, quantize, calibration, device, progress, target, budget, steps):
        self.mod, self.inputs, self.prune, self.compress, self.quantize = mod, inputs, prune, compress, quantize
        self.calibration, self.device, self.progress, self.target = calibration, device, progress, target
        self.budget, self.steps = budget, steps
        self.say = progress.message if progress is not None else (lambda text: None)
        self.block = channel_block(quantize, target)

    def run(self):
        from ..compression.config import CompressionError

        started = time.monotonic()
        shrunk = ShrunkGraph(self.mod)
        fixed_prune = self.prune is not None and not _searched(self.prune)
        if fixed_prune:
            from ..pruning.prune import prune_graph

            shrunk.mod, shrunk.pruning = prune_graph(
                shrunk.mod, _unbudgeted(self.prune), self.inputs, self.calibration, channel_multiple=self.block
            )
            self.steps.add("prune", shrunk.mod, shrunk.pruning.accuracy)
        fixed = [c for c in self.compress if not c.searched]
        searched = [c for c in self.compress if c.searched]
        report = CompressionReport(methods=[_scheme(c) for c in self.compress], config=[config_json(c) for c in self.compress])
        if fixed:
            shrunk.mod, fixed_report = compress_fixed(shrunk.mod, fixed, self.inputs, self.steps)
            report.layers, report.skipped = dict(fixed_report.layers), list(fixed_report.skipped)
        self.fixed_passes = list(fixed_report.passes) if fixed else []
        base, marker = shrunk.mod, len(self.steps.table.rows)
        base_drop = self.steps.table.rows[-1].get("drop", 0.0) if marker > 1 else 0.0
        reserve = self._quantization_cost(base) if self.quantize is not None else 0.0
        search_budget = self.budget - reserve - base_drop
        prune_searched = self.prune if self.prune is not None and _searched(self.prune) else None
        for attempt in range(2):
            del self.steps.table.rows[marker:]
            report.skipped = [s for s in report.skipped if s.get("fixed")]
            result = self._search_and_apply(base, prune_searched, searched, search_budget, report)
            final = self.steps.table.rows[-1]
            if final["drop"] <= self.budget + 1e-9:
                break
            excess = final["drop"] - self.budget
            if attempt == 1 or not result["levels"]:
                raise CompressionError(
                    f"the combination costs {final['drop']:.2f} points of {final['metric']} on "
                    f"{self.steps.data.source}, more than --max-accuracy-drop {self.budget:g} "
                    f"(int8 alone: {reserve:.2f}); raise the budget or leave a method out"
                )
            self.say(f"compression: {final['drop']:.2f} points over {self.budget:g}; searching again with {excess:.2f} less")
            search_budget -= excess
        shrunk.mod = result["mod"]
        if result["pruning"] is not None:
            shrunk.pruning = result["pruning"]
        shrunk.quantization = result["quantization"]
        report.budget = {
            "max_accuracy_drop": self.budget, "set_aside_for_quantization": round(reserve, 3),
            "fixed_steps_drop": round(base_drop, 3), "search_budget": round(search_budget, 3),
            "final_drop": self.steps.table.rows[-1]["drop"], "unit": "stored bytes saved per point",
        }
        report.seconds = round(time.monotonic() - started, 2)
        shrunk.compression = report if self.compress else None
        return shrunk

    def _quantization_cost(self, base) -> float:
        from ..quantization.quantize import quantize_graph

        _, quantization = quantize_graph(base, _unbudgeted(self.quantize), self.inputs, self.calibration, None, self.device, self.target)
        cost = max(float(quantization.accuracy["drop"]), 0.0)
        self.say(f"compression: int8 alone costs {cost:.2f} points; {max(self.budget - cost, 0):.2f} left for the rest")
        return cost

    def _prepare(self, base, prune, searched) -> None:
        """The model the scan edits, the methods' plans, and the scan's memory (built once
        for all attempts)."""
        from ..compression.plans import PLANS
        from ..pruning.evaluate import WeightEditableModel
        from ..pruning.prune import PLANNERS

        self.model = WeightEditableModel(base, len(self.inputs))
        plans = {}
        if prune is not None:
            plans["prune"] = PLANNERS[type(prune)](self.model, prune)
            plans["prune"].channel_multiple = self.block
        for config in sorted(searched, key=lambda c: _EXCLUSIVE.index(_scheme(c)), reverse=True):  # cluster first
            covariances = None
            if _scheme(config) == "lowrank":
                covariances = layer_input_covariances(base, self.model.graph, self.steps.data.samples)
            plans[_scheme(config)] = PLANS[type(config)](
                self.model, config, search=True, covariances=covariances, multiple=self.block
            )
        self.joint = JointPlan(plans)
        self.single: dict = {}

    def _search_and_apply(self, base, prune, searched, search_budget: float, report: CompressionReport) -> dict:
        from ..budget_search import greedy_search
        from ..calibration import accuracy_report, confidence_drop

        if not hasattr(self, "joint"):
            self._prepare(base, prune, searched)
        model, joint, plans = self.model, self.joint, self.joint.plans
        data, reference = self.steps.data, self.steps.reference
        evaluations = [0]

        def drop_of(levels: dict) -> float:
            # The larger of the top-1 drop and the confidence the reference's class loses:
            # calibration samples are often ones the model is sure of, where top-1 alone
            # lets through changes that cost held-out accuracy.
            evaluations[0] += 1
            outputs = model.run(joint.edit(model.weights, levels), data.samples)
            return max(accuracy_report(reference, outputs, data)["drop"], confidence_drop(reference, outputs))

        levels = {}
        if joint.knobs and search_budget > 0:
            self.say(f"compression: sensitivity scan of {len(joint.knobs)} knobs on {data.source}, budget {search_budget:.2f}")
            levels = greedy_search(joint, drop_of, search_budget, report.sensitivity, excludes=joint.excludes, single=self.single)
        report.evaluations += evaluations[0]
        chosen = joint.split(levels)
        mod, pruning = base, None
        if "prune" in plans:
            mod, pruning = self._apply_prune(base, plans["prune"], prune, chosen["prune"])
        ran = PassLog()
        for method in ("cluster", "lowrank"):
            if method in plans:
                covariances = None
                if method == "lowrank" and pruning is not None and pruning.passes:
                    # Pruned inputs: the covariances of the layers as they are now.
                    from ..analysis.channels import analyze_channels

                    covariances = layer_input_covariances(mod, analyze_channels(mod), data.samples)
                mod = apply_compression(plans[method], mod, chosen[method], ran, covariances)
                report.layers[method] = plans[method].layer_report(chosen[method])
                report.skipped.extend({**s, "method": method} for s in plans[method].skipped)
                self.steps.add(method, mod)
        report.passes = [*self.fixed_passes, *ran]
        quantization = None
        if self.quantize is not None:
            from ..quantization.config import scheme_name
            from ..quantization.quantize import quantize_graph

            mod, quantization = quantize_graph(mod, _unbudgeted(self.quantize), self.inputs, self.calibration, self.progress, self.device, self.target)
            self.steps.add(scheme_name(self.quantize), mod, stats=quantization.after, same_macs=True)
        return {"mod": mod, "levels": levels, "pruning": pruning, "quantization": quantization}

    def _apply_prune(self, base, plan, config, chosen: dict):
        from ..analysis.stats import model_stats
        from ..pruning.config import CONFIG_VERSION, scheme_name

        ratios = {knob: chosen.get(knob, 0.0) for knob in plan.knobs}
        ran = PassLog()
        pruned = plan.apply(base, ratios, ran)
        row = self.steps.add(f"prune {scheme_name(config)}", pruned)
        report = PruningReport(
            passes=list(ran), scheme=scheme_name(config),
            config={**dataclasses.asdict(config), "type": type(config).__name__, "version": CONFIG_VERSION},
            layers=plan.layer_report(ratios), skipped=plan.skipped(),
            before=model_stats(base).to_json(), after=model_stats(pruned).to_json(),
            accuracy={
                "metric": row["metric"], "data": self.steps.data.source, "samples": len(self.steps.data.samples),
                "before": self.steps.table.rows[0]["accuracy"], "after": row["accuracy"], "drop": row["drop"],
                "output_sqnr_db": row["output_sqnr_db"],
            },
            stores_weights_apart=plan.stores_weights_apart,
        )
        return pruned, report


def _searched(config) -> bool:
    """A config whose levels the scan picks (no ratio, rank or bits of its own)."""
    searched = getattr(config, "searched", None)
    if searched is not None:
        return bool(searched)
    return config.ratio is None and getattr(config, "alpha", None) is None


def _unbudgeted(config):
    return dataclasses.replace(config, max_accuracy_drop=None) if config.max_accuracy_drop is not None else config


def _scheme(config) -> str:
    from ..compression.config import scheme_name

    return scheme_name(config)
