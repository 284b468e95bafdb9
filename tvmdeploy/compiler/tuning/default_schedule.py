"""Untuned is not catastrophic: a real schedule for every CPU kernel, without measuring.

Lowered TVM kernels are naive loop nests: one thread, no tiling, no vectorization (light
SqueezeNet: 255 ms). TVM 0.27 has no CPU fallback schedule (dlight's CPU rules cover
only GEMV and reductions, and made convolutions slower here). MetaSchedule's design
space for a kernel, though, is built from the same CPU rules tuning uses (multi-level
tiling, parallelize/vectorize/unroll, inlining), and its first sample, with the
postprocessors applied, is a valid schedule that is already tiled, parallel and
vectorized (light SqueezeNet: 55 ms, 4.7x faster). Tuning then finds better ones.

A kernel whose sampled schedule fails a postprocessor keeps its naive form.

GPU kernels cannot stay naive (an unbound loop nest fails codegen with "Did you forget
to bind?"): they get dlight's default GPU schedules, the rules TVM's cuda pipeline
applies inside tvm.compile, applied here so that the count is known and a kernel no
rule covers fails with its name.
"""

from __future__ import annotations

from .. import _tvm
from .._tvm import ms, tvm
from ...errors import BuildError
from ..kernels.select import space_for_kernel


def apply_default_schedules(mod: tvm.ir.IRModule, target: tvm.target.Target, seed: int = 1) -> tuple[tvm.ir.IRModule, int]:
    """Schedule every not-yet-scheduled kernel; returns (module, kernels scheduled)."""
    if target.kind.name == "cuda":
        return _gpu_default_schedules(mod, target)
    if target.kind.name != "llvm":
        return mod, 0
    _tvm.register_tensor_intrinsics(target.kind.name)
    cores = int(target.attrs.get("num-cores", 1))
    updates = {}
    with _tvm.native_stderr_to(None):  # C++ warnings about rules this target lacks
        for gv, func in mod.functions.items():
            if not isinstance(func, tvm.tirx.PrimFunc) or _is_scheduled(func) or _has_empty_buffer(func):
                continue
            scheduled = _first_design_space_sample(func, target, cores, seed)
            if scheduled is not None:
                updates[gv] = scheduled.with_attr("global_symbol", gv.name_hint).with_attr("tirx.is_scheduled", True)
    if not updates:
        return mod, 0
    mod = tvm.ir.IRModule(dict(mod.functions), attrs=mod.attrs)
    for gv, func in updates.items():
        mod[gv] = func
    return mod, len(updates)


def _gpu_default_schedules(mod: tvm.ir.IRModule, target: tvm.target.Target) -> tuple[tvm.ir.IRModule, int]:
    todo = [gv for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc) and not _is_scheduled(f)]
    if not todo:
        return mod, 0
    with target:
        scheduled = _tvm.dlight_gpu_default_schedule()(mod)
    missed = [gv.name_hint for gv in todo if not _is_scheduled(scheduled[gv])]
    if missed:
        raise BuildError(
            f"no default GPU schedule for kernel(s) {', '.join(missed[:5])} (dlight has no rule for them); "
            f"tune them on a GPU (`tvmdeploy tune --target {target.kind.name}-...`) or report the model"
        )
    return scheduled, len(todo)


def _has_empty_buffer(func) -> bool:
    """A kernel on a zero-size tensor (a parameter or an intermediate, e.g. a slice past the
    end that a concat then drops): its loops have extent 0, which the schedules'
    vectorization rejects at build time ("Failed to vectorize loop with extent 0"); it
    does no work there, so it keeps its plain loops."""
    # TVM 0.27 (tirx) exposes no TIR visitor to Python: the printed kernel is read.
    # Relax-lowered kernels have int64 shapes and loop extents.
    for line in func.script(show_meta=False).splitlines():
        if "T.int64(0)" in line and ("T.Buffer(" in line or "alloc_buffer(" in line or "T.grid(" in line or " in range(" in line):
            return True
    return False


def _is_scheduled(func) -> bool:
    return func.attrs is not None and bool(func.attrs.get("tirx.is_scheduled", False))


def _first_design_space_sample(func, target, cores: int, seed: int):
    space = space_for_kernel(func, target)
    if space == "post-order-apply":
        return _design_space_sample(func, target, cores, seed, space)
    # A tensorized (int8) kernel: some samples vectorize the loop around the intrinsic,
    # which codegen rejects ("Cannot broadcast lanes=16 to 32"); tuning discards those,
    # here the first sample that builds is taken.
    for attempt in range(8):
        scheduled = _design_space_sample(func, target, cores, seed + attempt, space_for_kernel(func, target))
        if scheduled is not None and _builds(scheduled, target):
            return scheduled
    return None


def _builds(func, target) -> bool:
    try:
        with _tvm.native_stderr_to(None):
            tvm.compile(tvm.ir.IRModule({"main": func}), target=target)
        return True
    except Exception:
        return False


def _design_space_sample(func, target, cores: int, seed: int, space):
    context = ms.TuneContext(
        mod=tvm.ir.IRModule({"main": func.with_attr("global_symbol", "main")}),
        target=target,
        space_generator=space,
        search_strategy="replay-trace",
        num_threads=cores,
        rand_state=seed,
    )
    try:
        spaces = context.generate_design_space()
        if not spaces:
            return None
        schedule = spaces[0]
        for postproc in context.space_generator.postprocs:
            if not postproc.apply(schedule):
                return None
        return schedule.mod["main"]
    except Exception:  # a rule or postprocessor that cannot handle this kernel
        return None
