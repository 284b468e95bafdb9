"""Build a Relax module for this machine and run it on samples.

Pruning and quantization judge their candidates by running them: the module is lowered
and given default schedules (no tuning, seconds to build), then called once per sample.
"""

from __future__ import annotations

import numpy as np

from . import _tvm
from ._tvm import relax, tvm
from ..errors import BuildError, summarize_exception
from ..runtime.loader import to_numpy


class HostModel:
    def __init__(self, mod: tvm.ir.IRModule, purpose: str):
        from .presets import load_preset, resolve_preset
        from .tuning.default_schedule import apply_default_schedules
        from .lowering import fold_weight_layouts, lower_for_tuning

        _, target = resolve_preset(load_preset("host"))
        try:
            lowered, _ = apply_default_schedules(lower_for_tuning(mod), target)
            lowered = fold_weight_layouts(lowered, target)
            with _tvm.native_stderr_to(None):
                executable = _tvm.compile_executable(lowered, target)
        except Exception as e:
            raise BuildError(f"could not build the model to {purpose}: {summarize_exception(e)}") from e
        self.device = tvm.cpu()
        self.vm = relax.VirtualMachine(executable, self.device)

    def run(self, samples: list[list[np.ndarray]], extra: list[np.ndarray] = ()) -> list[list[np.ndarray]]:
        """Outputs (numpy, flattened tuples) per sample; `extra` arrays go after the inputs."""
        device = self.device
        params = [tvm.runtime.tensor(w, device) for w in extra]
        main = self.vm["main"]
        return [to_numpy(main(*[tvm.runtime.tensor(x, device) for x in sample], *params)) for sample in samples]
