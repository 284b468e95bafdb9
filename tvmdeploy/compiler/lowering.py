"""Lowering a Relax graph to fused TIR kernels: the units that are tuned, cached and built.

Tuning, the build and the host evaluator (pruning / quantization candidates) all lower
through `lower_for_tuning`, so the kernels tuned are exactly the kernels built.
"""

from __future__ import annotations

from . import _tvm
from ._tvm import relax, tvm
from .reports import LoweringReport, PassLog

LOWERING_PASSES = (
    relax.transform.LegalizeOps,
    relax.transform.AnnotateTIROpPattern,
    relax.transform.FoldConstant,
    relax.transform.FuseOps,
    relax.transform.FuseTIR,
)


def lower(mod: tvm.ir.IRModule) -> tuple[tvm.ir.IRModule, LoweringReport]:
    """The graph as fused kernels, and the report naming the passes run."""
    ran = PassLog()
    mod = ran.run_all(LOWERING_PASSES, mod, "lowering")
    kernels = sum(1 for _, func in mod.functions_items() if isinstance(func, _tvm.PrimFunc))
    return mod, LoweringReport(passes=list(ran), kernels=kernels)


def lower_for_tuning(mod: tvm.ir.IRModule) -> tvm.ir.IRModule:
    return lower(mod)[0]
