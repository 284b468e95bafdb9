"""Run a model many times with edited weights, without rebuilding it.

The model is built once for this machine with its weights as parameters
(`lift_weights`). Zeroing a consumer's input channels gives exactly the outputs of the
model with those channels removed (they contribute nothing downstream), and zeroing
weights is magnitude pruning itself, so every candidate plan of the sensitivity scan is
one set of numpy edits and a pass over the calibration samples.
"""

from __future__ import annotations

import numpy as np

from .. import _tvm
from .._tvm import relax, tvm
from ..errors import BuildError, summarize_exception
from .channels import analyze_channels, bindings_of
from .lift import lift_weights


class WeightEditableModel:
    def __init__(self, mod: tvm.ir.IRModule, num_inputs: int):
        from ..presets import load_preset, resolve_preset
        from ..tuning.default_schedule import apply_default_schedules
        from ..tuning.tuner import lower_for_tuning

        self.graph = analyze_channels(mod)
        lifted, self.weights = lift_weights(mod)
        func = lifted["main"]
        params = list(func.params)[num_inputs:]
        position = {p: i for i, p in enumerate(params)}
        self.slot_param: dict[tuple[int, int], int] = {}
        for layer in self.graph.layers:
            arg = bindings_of(func)[layer.slot[0]].value.args[layer.slot[1]]
            self.slot_param[layer.slot] = position[arg]
        _, target = resolve_preset(load_preset("host"))
        try:
            lowered, _ = apply_default_schedules(lower_for_tuning(lifted), target)
            with _tvm.native_stderr_to(None):
                executable = tvm.compile(lowered, target=target)
        except Exception as e:
            raise BuildError(f"could not build the model to measure pruning: {summarize_exception(e)}") from e
        self.device = tvm.cpu()
        self.vm = relax.VirtualMachine(executable, self.device)
        self.num_inputs = num_inputs

    def layer_weight(self, layer) -> np.ndarray:
        return self.weights[self.slot_param[layer.slot]]

    def run(self, weights: list[np.ndarray], samples: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        """Outputs (as numpy) for every sample, with `weights` in place of the model's."""
        device = self.device
        params = [tvm.runtime.tensor(w, device) for w in weights]
        main = self.vm["main"]
        results = []
        for sample in samples:
            out = main(*[tvm.runtime.tensor(x, device) for x in sample], *params)
            results.append(_to_numpy(out))
        return results


def _to_numpy(result) -> list[np.ndarray]:
    if hasattr(result, "numpy"):
        return [result.numpy()]
    out = []
    for item in result:
        out.extend(_to_numpy(item))
    return out
