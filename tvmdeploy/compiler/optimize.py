"""Graph-level optimization of the imported Relax module, before any kernel is built.

Weights are constants here (the importer binds them), so BatchNorm folds into the
preceding convolution's weights at compile time and costs nothing at run time.
Operator fusion (conv/matmul + bias + activation) happens next, when the graph is
lowered to kernels (`lowering.lower_for_tuning`: LegalizeOps -> FuseOps -> FuseTIR),
because tuning and building must see the same kernels.
"""

from __future__ import annotations

import tvm
from tvm import relax

from .passes import FoldConvChannelAffine, IdentifierParamNames
from .passes.clamp_gather_indices import ClampGatherIndices
from .passes.clip_as_ops import ClipAsRelaxOps
from .passes.guard_integer_division import GuardIntegerDivision
from .passes.remove_dropout import RemoveInferenceDropout
from .reports import GraphReport, PassLog


# Order matters: BatchNorm can only fold into a conv whose weight and BN statistics are
# constants, so fold constants first. TVM's FoldBatchnormToConv2D takes conv -> BN; the
# remaining BatchNorms (after a biased conv, or after no conv) are decomposed into
# per-channel arithmetic, which FoldConvChannelAffine folds into the conv weights and one
# bias (CanonicalizeBindings first drops the BN's leftover tuple, which blocks fusion).
GRAPH_PASSES = (
    IdentifierParamNames,  # "gpu_0/data_0" breaks CUDA codegen
    # A gather by run-time indices never reads outside its table; first, so FoldConstant
    # (which legalizes each op it tries) never meets TVM's unchecked take and warns.
    ClampGatherIndices,
    GuardIntegerDivision,  # likewise, an integer division by zero never traps (SIGFPE)
    relax.transform.FoldConstant,
    relax.transform.FoldBatchnormToConv2D,
    relax.transform.DecomposeOpsForInference,
    relax.transform.CanonicalizeBindings,
    relax.transform.FoldConstant,
    FoldConvChannelAffine,
    relax.transform.FoldConstant,
    relax.transform.EliminateCommonSubexpr,
    ClipAsRelaxOps,  # ReLU6 as ops the layout change and fusion see through
    RemoveInferenceDropout,  # its (output, mask) tuple stops the layout change
    relax.transform.DeadCodeElimination,
)


def optimize_graph(mod: tvm.ir.IRModule) -> tuple[tvm.ir.IRModule, GraphReport]:
    """Run the graph passes; return the module and the report naming the passes run."""
    ran = PassLog()
    well_formed = _well_formed(mod)
    for make_pass in GRAPH_PASSES:
        result = ran.run_all((make_pass,), mod, "graph")
        if well_formed and not _well_formed(result):
            # TVM's FoldConstant legalizes an op whose output shape depends on tensor values
            # (Slice with starts/ends as inputs: dynamic_strided_slice) to evaluate it, and
            # leaves calls to the shape function it made but did not keep. The graph as it
            # was is correct: keep it (the op is legalized properly when lowering), and do
            # not list the pass as run.
            ran.pop()
            continue
        mod = result
    return mod, GraphReport(passes=list(ran))


def _well_formed(mod: tvm.ir.IRModule) -> bool:
    try:
        # TVM 0.27 returns None when the module is fine and raises for some defects
        # (an undefined GlobalVar); older versions return a bool.
        return relax.analysis.well_formed(mod) is not False
    except Exception:
        return False
