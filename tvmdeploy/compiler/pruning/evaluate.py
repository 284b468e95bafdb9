"""Run a model many times with edited weights, without rebuilding it.

The model is built once for this machine with its weights as parameters
(`lift_weights`). Zeroing a consumer's input channels gives exactly the outputs of the
model with those channels removed (they contribute nothing downstream), and zeroing
weights is magnitude pruning itself, so every candidate plan of the sensitivity scan is
one set of numpy edits and a pass over the calibration samples.
"""

from __future__ import annotations

import numpy as np

from .._tvm import tvm
from ..host_eval import HostModel
from ..analysis.channels import analyze_channels, bindings_of
from .lift import lift_weights


class WeightEditableModel:
    def __init__(self, mod: tvm.ir.IRModule, num_inputs: int):
        self.mod = mod
        self.graph = analyze_channels(mod)
        lifted, self.weights = lift_weights(mod)
        func = lifted["main"]
        params = list(func.params)[num_inputs:]
        position = {p: i for i, p in enumerate(params)}
        self.slot_param: dict[tuple[int, int], int] = {}
        for layer in self.graph.layers:
            arg = bindings_of(func)[layer.slot[0]].value.args[layer.slot[1]]
            self.slot_param[layer.slot] = position[arg]
        self.model = HostModel(lifted, "measure pruning")
        self.num_inputs = num_inputs

    def layer_weight(self, layer) -> np.ndarray:
        return self.weights[self.slot_param[layer.slot]]

    def run(self, weights: list[np.ndarray], samples: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        """Outputs (as numpy) for every sample, with `weights` in place of the model's."""
        return self.model.run(samples, weights)
