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
from .reports import GraphReport, PassLog


# Order matters: BatchNorm can only fold into a conv whose weight and BN statistics are
# constants, so fold constants first. TVM's FoldBatchnormToConv2D takes conv -> BN; the
# remaining BatchNorms (after a biased conv, or after no conv) are decomposed into
# per-channel arithmetic, which FoldConvChannelAffine folds into the conv weights and one
# bias (CanonicalizeBindings first drops the BN's leftover tuple, which blocks fusion).
GRAPH_PASSES = (
    IdentifierParamNames,  # "gpu_0/data_0" breaks CUDA codegen
    relax.transform.FoldConstant,
    relax.transform.FoldBatchnormToConv2D,
    relax.transform.DecomposeOpsForInference,
    relax.transform.CanonicalizeBindings,
    relax.transform.FoldConstant,
    FoldConvChannelAffine,
    relax.transform.FoldConstant,
    relax.transform.EliminateCommonSubexpr,
    relax.transform.DeadCodeElimination,
)


def optimize_graph(mod: tvm.ir.IRModule) -> tuple[tvm.ir.IRModule, GraphReport]:
    """Run the graph passes; return the module and the report naming the passes run."""
    ran = PassLog()
    mod = ran.run_all(GRAPH_PASSES, mod, "graph")
    return mod, GraphReport(passes=list(ran))
