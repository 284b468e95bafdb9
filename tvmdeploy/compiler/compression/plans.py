"""Compression methods as plans for the budget search (budget_search.py): per layer, a
grid of levels, what each level saves, and the weight edits that reproduce the
compressed model exactly on a model built once with its weights as parameters
(pruning/evaluate.WeightEditableModel), so the scan costs inference passes, not builds."""

from __future__ import annotations

import numpy as np

from ...runtime.weights_file import encoded_nbytes
from .cluster import cluster_weight
from .config import BITS_GRID, Clustering, CompressionError, LowRank
from .lowrank import approximate, as_matrix, break_even_rank, fixed_rank, rank_grid


class _LayerPlan:
    """Knobs are layer names; levels edit one layer's weight each."""

    method = ""

    def __init__(self, model, config, search: bool = False):
        self.model, self.config, self.search = model, config, search
        self.layers = {layer.name: layer for layer in model.graph.layers}
        self.knobs: list[str] = []
        self.unit = "macs"  # what saving() counts: "macs" or "bytes"

    def edit(self, weights: list[np.ndarray], levels: dict) -> list[np.ndarray]:
        weights = list(weights)
        for name, level in levels.items():
            layer = self.layers[name]
            index = self.model.slot_param[layer.slot]
            weights[index] = self.edit_weight(layer, weights[index], level)
        return weights

    def weight(self, name: str) -> np.ndarray:
        return self.model.layer_weight(self.layers[name])

    def out_pixels(self, name: str) -> int:
        layer = self.layers[name]
        out = [int(d) for d in self.model.graph.bindings[layer.slot[0]].var.ty.shape.values]
        return int(np.prod(out)) // layer.channels

    def saving(self, knob: str, level) -> float:
        return self.bytes_saved(knob, level) if self.unit == "bytes" else self.macs_saved(knob, level)

    def macs_saved(self, knob: str, level) -> int:
        return 0


class LowRankPlan(_LayerPlan):
    method = "lowrank"

    def __init__(self, model, config: LowRank, search: bool = False, covariances: dict | None = None, multiple: int = 1):
        super().__init__(model, config, search)
        self.skipped: list[dict] = []
        self.grids: dict[str, list[int]] = {}
        # Data-aware factors: the covariance of every layer's inputs on the calibration samples.
        self.covariances = covariances or {}
        for name in self.layers:
            matrix = as_matrix(self.weight(name), self.layers[name].out_axis)
            rows, cols = matrix.shape
            grid = rank_grid(rows, cols, multiple) if search else [fixed_rank(config, matrix, self.covariances.get(name))]
            grid = [r for r in grid if r <= break_even_rank(rows, cols)]
            if grid:
                self.grids[name] = grid
                self.knobs.append(name)
            else:
                self.skipped.append({"layer": name, "reason": f"no rank below {break_even_rank(rows, cols) + 1} saves compute ({rows} x {cols})"})
        if config.rank is not None and not self.knobs:
            largest = max((min(as_matrix(self.weight(n), self.layers[n].out_axis).shape) for n in self.layers), default=0)
            raise CompressionError(
                f"low-rank rank {config.rank} saves compute in no layer (the largest layer has full rank {largest}); "
                f"use a smaller rank or lowrank:RATIO"
            )

    def grid(self, knob: str) -> list[int]:
        return self.grids[knob]

    def fixed_levels(self) -> dict:
        return {name: self.grids[name][0] for name in self.knobs}

    def edit_weight(self, layer, weight, rank: int) -> np.ndarray:
        return approximate(weight, layer.out_axis, rank, self.covariances.get(layer.name))

    def _dims(self, name: str) -> tuple[int, int]:
        return as_matrix(self.weight(name), self.layers[name].out_axis).shape

    def macs_saved(self, knob: str, rank: int) -> int:
        rows, cols = self._dims(knob)
        return self.out_pixels(knob) * (rows * cols - rank * (rows + cols))

    def bytes_saved(self, knob: str, rank: int) -> int:
        rows, cols = self._dims(knob)
        return 4 * (rows * cols - rank * (rows + cols))

    def layer_report(self, levels: dict) -> list[dict]:
        rows = []
        for name in self.layers:
            r, c = self._dims(name)
            rank = levels.get(name)
            rows.append({
                "layer": name, "matrix": [r, c], "full_rank": min(r, c), "rank": rank,
                "macs_before": self.out_pixels(name) * r * c,
                "macs_after": self.out_pixels(name) * (r * c if rank is None else rank * (r + c)),
            })
        return rows


class ClusterPlan(_LayerPlan):
    method = "cluster"

    def __init__(self, model, config: Clustering, search: bool = False, covariances: dict | None = None, multiple: int = 1):
        super().__init__(model, config, search)
        self.knobs = list(self.layers)
        self.unit = "bytes"
        self.skipped: list[dict] = []

    def grid(self, knob: str):
        return BITS_GRID if self.search else (self.config.bits,)

    def fixed_levels(self) -> dict:
        return {name: self.config.bits for name in self.knobs}

    def edit_weight(self, layer, weight, bits: int) -> np.ndarray:
        return cluster_weight(weight, bits, layer.out_axis, self.config.per_channel)

    def bytes_saved(self, knob: str, bits: int) -> int:
        weight = self.weight(knob)
        clustered = self.edit_weight(self.layers[knob], weight, bits)
        return weight.nbytes - encoded_nbytes(clustered)

    def layer_report(self, levels: dict) -> list[dict]:
        rows = []
        for name in self.layers:
            weight, bits = self.weight(name), levels.get(name)
            stored = encoded_nbytes(self.edit_weight(self.layers[name], weight, bits)) if bits else weight.nbytes
            rows.append({"layer": name, "bits": bits, "bytes_before": int(weight.nbytes), "bytes_after": int(stored)})
        return rows


PLANS = {LowRank: LowRankPlan, Clustering: ClusterPlan}
