"""Lowering a Relax graph to fused TIR kernels: the units that are tuned, cached and built.

Tuning, the build and the host evaluator (pruning / quantization candidates) all lower
through `lower_for_tuning`, so the kernels tuned are exactly the kernels built.

Weight prepacking, TVM's own mechanism (what `static_shape_tuning_pipeline(
cpu_weight_prepack=True)` does), in two halves:
  - here, after FuseTIR: `AttachAttrLayoutFreeBuffers` marks each kernel's buffers that
    are fed by weight constants as layout-free, so MetaSchedule's `RewriteLayout`
    postprocessor (tuned records and default schedules alike) may store them in the
    layout its loop nest reads (e.g. a conv weight [OC/8, IC, KH, KW, 8]);
  - after the schedules are applied (`fold_weight_layouts`): `SplitLayoutRewritePreproc`
    moves each kernel's weight-repacking block into a kernel of its own, and
    `FoldConstant` runs it at compile time, so the artifact holds packed weights (and
    `RemoveUncalledKernels` drops the kernels nothing calls any more: the originals and
    the repacking ones; TVM's DeadCodeElimination keeps them, they have global symbols).
Weights that are parameters of `main` (a magnitude-pruned model keeps them beside the
library) stay unmarked: repacking them would cost a kernel call on every inference.

Before all that, on CPU targets (`pack_for_target`): float32 convolutions with constant
weights move to NHWC (`ConvertLayout`: pooling and elementwise ops follow, transposes
only at the graph's borders; a conv of a channel concatenation becomes the sum of convs of
its parts, `SplitConvOverConcat`) and become our packed kernels (`PackConv2dFp32`), whose
weights are packed here already (so they are not marked layout-free); 3x3 stride-1 ones
first become Winograd transforms around a grouped 1x1 conv (`WinogradConv2dFp32`), which
is then packed like any other. Float32 matmuls by a constant weight become the packed
dense kernel, the same micro-kernel over the rows (`PackDenseFp32`).
"""

from __future__ import annotations

from . import _tvm
from ._tvm import relax, tvm
from .kernels.fp32_packed import BLOCK_NAME as FP32_PACKED
from .kernels.select import target_vector_shape
from .passes.channel_shuffle import ChannelShuffleNHWC
from .passes.fast_math import FastMath
from .passes.layer_norm_rows import LayerNormRows
from .passes.pack_conv2d import PackConv2dFp32, count_packable
from .passes.pack_dense import PackDenseFp32, count_packable_dense
from .passes.split_conv_over_concat import SplitConvOverConcat
from .passes.sink_channel_take import SinkChannelTake, legalize_channel_gather
from .passes.winograd_conv2d import WinogradConv2dFp32, count_winograd
from ..errors import BuildError
from .reports import LoweringReport, PassLog

LOWERING_PASSES = (
    lambda: relax.transform.LegalizeOps({"relax.take": legalize_channel_gather}),
    relax.transform.AnnotateTIROpPattern,
    relax.transform.FoldConstant,
    relax.transform.FuseOps,
    relax.transform.FuseTIR,
    relax.transform.AttachAttrLayoutFreeBuffers,
    # FuseTIR leaves the kernels it fused (e.g. a packed conv before its epilogue joined
    # it), and AttachAttrLayoutFreeBuffers every kernel it marked, beside the marked copy
    # main now calls: scheduling and building them was wasted compile time.
    lambda: remove_uncalled_kernels,
)

# After the schedules: the weight repacking that RewriteLayout put in kernels, folded.
WEIGHT_LAYOUT_PASSES = (
    relax.transform.SplitLayoutRewritePreproc,
    relax.transform.FoldConstant,
    lambda: remove_uncalled_kernels,  # the kernels before the split and the repacking ones
)


def lower(mod: tvm.ir.IRModule, target: tvm.target.Target | None = None) -> tuple[tvm.ir.IRModule, LoweringReport]:
    """The graph as fused kernels for `target` (None: generic kernels, no packed
    layouts), and the report naming the passes run."""
    ran = PassLog()
    mod, packed, winograd, dense = pack_for_target(mod, target, ran)
    if target is not None and target.kind.name == "llvm":
        # Vectorizable exp/erf/tanh/softmax (passes/fast_math.py), LayerNorm as a row kernel.
        mod = ran.run_all((FastMath, LayerNormRows), mod, "lowering")
    mod = ran.run_all(LOWERING_PASSES, mod, "lowering")
    mod = _only_constants_layout_free(mod)
    kernels = sum(1 for _, func in mod.functions_items() if isinstance(func, _tvm.PrimFunc))
    return mod, LoweringReport(
        passes=list(ran), kernels=kernels, packed_conv2d=packed, winograd_conv2d=winograd, packed_dense=dense
    )


def lower_for_tuning(mod: tvm.ir.IRModule, target: tvm.target.Target | None = None) -> tvm.ir.IRModule:
    return lower(mod, target)[0]


def pack_for_target(mod: tvm.ir.IRModule, target, ran: PassLog) -> tuple[tvm.ir.IRModule, int, int, int]:
    """float32 convolutions and matmuls with constant weights -> packed kernels, on CPU
    targets; returns the module and how many convolutions were packed, how many of them
    run as Winograd, and how many matmuls were packed."""
    if target is None or target.kind.name != "llvm":
        return mod, 0, 0, 0
    lanes, _ = target_vector_shape(target)
    mod, packed, winograd = _pack_convs(mod, lanes, ran)
    dense = count_packable_dense(mod)
    if dense:
        mod = ran.run_all((lambda: PackDenseFp32(lanes),), mod, "lowering")
    return mod, packed, winograd, dense


def _pack_convs(mod: tvm.ir.IRModule, lanes: int, ran: PassLog) -> tuple[tvm.ir.IRModule, int, int]:
    """float32 convolutions with constant weights -> NHWC packed kernels, 3x3 ones through
    Winograd; returns the module, how many were packed and how many run as Winograd."""
    if not count_packable(mod, ("NCHW", "OIHW")) + count_packable(mod, ("NHWC", "OHWI")):
        return mod, 0, 0
    layout = (
        lambda: relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]}),
        relax.transform.FoldConstant,  # the weights' OIHW -> OHWI transposes
        ChannelShuffleNHWC,  # a shuffle ConvertLayout left in NCHW
        SplitConvOverConcat,  # convs of channel concatenations: sums of convs of the parts
    )
    trial = PassLog()
    try:
        nhwc = trial.run_all(layout, mod, "lowering")
    except BuildError:
        # An op ConvertLayout cannot carry: the graph stays NCHW on generic kernels
        # (slower, still correct) rather than failing the compile.
        return mod, 0, 0
    ran.extend(trial)
    packed, winograd = count_packable(nhwc, ("NHWC", "OHWI")), count_winograd(nhwc, lanes)
    passes = (lambda: WinogradConv2dFp32(lanes), lambda: PackConv2dFp32(lanes), SinkChannelTake)
    return ran.run_all(passes if winograd else passes[1:], nhwc, "lowering"), packed, winograd


def fold_weight_layouts(mod: tvm.ir.IRModule, target: tvm.target.Target, ran: PassLog | None = None) -> tvm.ir.IRModule:
    """Weights repacked at compile time, for kernels whose schedule rewrote their layout
    (CPU targets; GPU schedules do not rewrite layouts). Returns the module unchanged
    when no kernel has a layout rewrite."""
    if target.kind.name != "llvm" or not any(
        _has_layout_rewrite(f) for _, f in mod.functions_items() if isinstance(f, _tvm.PrimFunc)
    ):
        return mod
    ran = PassLog() if ran is None else ran
    for make_pass in WEIGHT_LAYOUT_PASSES:
        mod = ran.run(make_pass(), mod)
    return mod


@tvm.transform.module_pass(opt_level=0, name="RemoveUncalledKernels")
def remove_uncalled_kernels(mod: tvm.ir.IRModule, _ctx=None) -> tvm.ir.IRModule:
    """The module without the TIR kernels that no Relax function calls."""
    called: set[str] = set()

    def visit(expr):
        if isinstance(expr, relax.GlobalVar):
            called.add(expr.name_hint)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, visit)
    kept = {gv: f for gv, f in mod.functions_items() if not isinstance(f, _tvm.PrimFunc) or gv.name_hint in called}
    if len(kept) == len(mod.functions):
        return mod
    return tvm.ir.IRModule(kept, attrs=mod.attrs)


def _has_layout_rewrite(func) -> bool:
    # RewriteLayout's preprocessing block carries this annotation (TVM 0.27 has no TIR
    # visitor in Python, so the printed kernel is searched).
    return "meta_schedule.layout_rewrite_preproc" in func.script(show_meta=False)


def _only_constants_layout_free(mod: tvm.ir.IRModule) -> tvm.ir.IRModule:
    """Drop layout-free marks from buffers that some call feeds with a non-constant
    (AttachAttrLayoutFreeBuffers also marks `main`'s weight parameters), and from
    kernels that index by loaded values."""
    main = next((f for gv, f in mod.functions_items() if gv.name_hint == "main"), None)
    if not isinstance(main, relax.Function):
        return mod
    constant_args: dict[str, set[int]] = {}

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op.same_as(tvm.ir.Op.get("relax.call_tir")):
            callee, args = expr.args[0], expr.args[1]
            fields = list(args.fields) if isinstance(args, relax.Tuple) else [args]
            consts = {i for i, a in enumerate(fields) if isinstance(a, _tvm.RelaxConstant)}
            name = callee.name_hint
            constant_args[name] = constant_args[name] & consts if name in constant_args else consts

    relax.analysis.post_order_visit(main.body, visit)
    updates = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, _tvm.PrimFunc) or func.attrs is None:
            continue
        marked = [int(i) for i in func.attrs.get("layout_free_buffers", [])]
        kept = [i for i in marked if i in constant_args.get(gv.name_hint, set())]
        if kept and FP32_PACKED in func.script(show_meta=False):
            kept = []  # packed at compile time already: the schedule reads them as they are
        if kept and _tvm.indexes_by_loaded_values(func):
            # A gather by constant indices: RewriteLayout repacks the index tensor wrongly
            # (GatherND's [b, s] pairs, as torch's dynamo exporter writes GPT-2's attention
            # mask, all read batch 1's row), and nothing in such a kernel reuses it.
            kept = []
        if kept != marked:
            updates[gv] = func.with_attr("layout_free_buffers", kept)
    if not updates:
        return mod
    mod = tvm.ir.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    for gv, func in updates.items():
        mod[gv] = func
    return mod
