"""Untuned is not catastrophic: a real schedule for every CPU kernel, without measuring.

Lowered TVM kernels are naive loop nests: one thread, no tiling, no vectorization (light
SqueezeNet: 255 ms). TVM 0.27 has no CPU fallback schedule (dlight's CPU rules cover
only GEMV and reductions, and made convolutions slower here). MetaSchedule's design
space for a kernel, though, is built from the same CPU rules tuning uses (multi-level
tiling, parallelize/vectorize/unroll, inlining), and its first sample, with the
postprocessors applied, is a valid schedule that is already tiled, parallel and
vectorized (light SqueezeNet: 55 ms, 4.7x faster). Tuning then finds better ones.

A kernel whose sampled schedule fails a postprocessor keeps its naive form.

Matmul-like kernels (one reduction axis: matmul, dense, batch matmul) replay that first
sample with analytic tile sizes instead (see analytic.py): vector-width output tiles,
register-sized row blocks; BERT-layer matmuls went from 3-6 to 30-110 GFLOPS (noisy A/B).

GPU kernels cannot stay naive (an unbound loop nest fails codegen with "Did you forget
to bind?"): they get dlight's default GPU schedules, the rules TVM's cuda pipeline
applies inside tvm.compile, applied here so that the count is known and a kernel no
rule covers fails with its name.
"""

from __future__ import annotations

from .. import _tvm
from .._tvm import ms, tvm
from ...errors import BuildError
from ..kernels import register_intrinsics
from ..kernels.select import packed_space, space_for_kernel, target_vector_shape
from ..kernels.channel_reduce import channel_reduce_schedule
from ..kernels.concat_copy import concat_schedule
from ..kernels.fp32_schedule import packed_conv2d_schedule
from ..kernels.layer_norm_rows import layer_norm_rows_schedule
from ..kernels.softmax_rows import softmax_rows_schedule
from ..kernels.winograd_schedule import winograd_schedule
from .analytic import UNROLL_CHOICE, matmul_like, tile_sizes
from .analytic_int8 import int8_default_schedule


# What the manifest calls these steps (they are not TVM passes).
CPU_DEFAULT_SCHEDULES = "DefaultCPUSchedules"
GPU_DEFAULT_SCHEDULES = "DefaultGPUSchedules(dlight)"


def apply_default_schedules(
    mod: tvm.ir.IRModule, target: tvm.target.Target, seed: int = 1, ran=None
) -> tuple[tvm.ir.IRModule, int]:
    """Schedule every not-yet-scheduled kernel; returns (module, kernels scheduled).
    ran: a PassLog that records the step when it scheduled any kernel."""
    if target.kind.name == "cuda":
        mod, count = _gpu_default_schedules(mod, target)
    elif target.kind.name == "llvm":
        mod, count = _cpu_default_schedules(mod, target, seed)
    else:
        return mod, 0
    if count and ran is not None:
        ran.append(GPU_DEFAULT_SCHEDULES if target.kind.name == "cuda" else CPU_DEFAULT_SCHEDULES)
    return mod, count


# Kernels below this many floating-point operations AND bytes of arguments get a
# single-thread schedule. The loader's workers sleep between kernels (spin count 0, see
# runtime/thread_pool.py), so every parallel kernel pays a wake-up: 10-40 us on the 2-vCPU
# VMs here, against ~3-4 us with spinning workers. Splitting a kernel of t us over 2
# threads pays only when t/2 + wake < t, i.e. t > 2 x wake ~ 20-80 us: ~1e6 operations at
# the 20-50 GFLOPS these kernels reach on one core, and for a copy (reshape, concatenate)
# ~512 KiB at ~10-25 GB/s. Measured (`fp32_speed.py --ab-overhead` style, Xeon Emerald
# Rapids VM, 2 threads): digits CNN 0.081 ms at 1e5/128 KiB -> 0.0125 ms at 1e6/512 KiB;
# SqueezeNet, ShuffleNet, MobileNetV2 within 2 % (noise) either way. Tuning measures, so
# tuned records make their own choice.
SERIAL_BELOW_FLOPS = 1e6
SERIAL_BELOW_BYTES = 512 * 1024


def _too_small_for_threads(func) -> bool:
    try:
        flops = _tvm.estimate_flops(tvm.ir.IRModule({"main": func}))
        nbytes = sum(_tvm.arg_bytes(func))
    except Exception:  # an analysis that cannot handle the kernel: keep the parallel default
        return False
    return flops < SERIAL_BELOW_FLOPS and nbytes < SERIAL_BELOW_BYTES


def _cpu_default_schedules(mod: tvm.ir.IRModule, target: tvm.target.Target, seed: int) -> tuple[tvm.ir.IRModule, int]:
    register_intrinsics(target.kind.name)
    updates = {}
    with _tvm.native_stderr_to(None):  # C++ warnings about rules this target lacks
        for gv, func in mod.functions.items():
            if not isinstance(func, _tvm.PrimFunc) or _is_scheduled(func) or _has_empty_buffer(func):
                continue
            schedule = cpu_default_schedule(func, target, seed)
            if schedule is not None:
                updates[gv] = _tvm.mark_scheduled(schedule.mod["main"], gv.name_hint)
    if not updates:
        return mod, 0
    mod = tvm.ir.IRModule(dict(mod.functions), attrs=mod.attrs)
    for gv, func in updates.items():
        mod[gv] = func
    return mod, len(updates)


def cpu_default_schedule(func, target: tvm.target.Target, seed: int = 1):
    """The untuned Schedule of one CPU kernel (its trace replays it: tuning measures it
    and commits it as a record, so a tuned kernel is never slower than its default);
    None where every way failed (the kernel keeps its naive loops)."""
    cores = int(target.attrs.get("num-cores", 1))
    vector = target_vector_shape(target)
    serial = cores > 1 and _too_small_for_threads(func)
    threads = 1 if serial else cores
    schedule = (
        packed_conv2d_schedule(func, vector, threads)
        or winograd_schedule(func, vector[0], threads)
        or softmax_rows_schedule(func, vector[0], threads)
        or layer_norm_rows_schedule(func, vector[0], threads)
        or channel_reduce_schedule(func, vector[0], threads)
        or concat_schedule(func, threads)
    )
    if schedule is None and serial:
        schedule = _serial_sample(func, target, seed)
    if schedule is None:
        schedule = _first_design_space_sample(func, target, cores, seed)
    return schedule


def _serial_sample(func, target, seed: int):
    """A single-thread schedule for a small kernel (None: a tensorized kernel, which keeps
    its own design space, or a sample that failed)."""
    if packed_space(func, target) is not None:
        return None
    return _design_space_sample(func, target, 1, seed, space_for_kernel(func, target, parallel=False), analytic=True)


def _analytic_tiles(schedule, context, target):
    """The design space's first sample replayed with analytic tile sizes (see analytic.py),
    postprocessors applied; None where they do not apply (not a matmul-like kernel) or the
    replay fails."""
    trace = schedule.trace
    blocks = _tvm.tiled_blocks(trace)
    if not blocks or not all(matmul_like([n for _, _, n in block]) for block in blocks):
        return None
    lanes, registers = target_vector_shape(target)
    decisions = {}
    for block in blocks:
        sizes = tile_sizes([e for _, e, _ in block], [n for _, _, n in block], lanes, registers)
        decisions.update({inst: size for (inst, _, _), size in zip(block, sizes)})
    for inst, candidates in _tvm.unroll_choices(trace):
        if UNROLL_CHOICE in candidates:
            decisions[inst] = candidates.index(UNROLL_CHOICE)
    decisions.update(_at_root(trace))
    try:
        tiled = _tvm.replay_with_decisions(context.mod, trace, decisions)
        return tiled if _postprocessed(tiled, context) else None
    except Exception:  # a decision the space rejects: the random sample serves
        return None


def _at_root(trace) -> dict:
    """Decisions that keep every block the sample may move (compute_at) at the root. A
    random location can put a reduction inside its consumer's loop, which recomputes it
    per element: a 1000-class softmax took 3.1 ms that way (its sum redone 1000 times);
    at the root it is one pass per step."""
    return {inst: _tvm.COMPUTE_AT_ROOT for inst in _tvm.compute_location_choices(trace)}


def _gpu_default_schedules(mod: tvm.ir.IRModule, target: tvm.target.Target) -> tuple[tvm.ir.IRModule, int]:
    todo = [gv for gv, f in mod.functions.items() if isinstance(f, _tvm.PrimFunc) and not _is_scheduled(f)]
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
    return _tvm.is_scheduled(func)


def _first_design_space_sample(func, target, cores: int, seed: int):
    if packed_space(func, target) is None:
        return _design_space_sample(func, target, cores, seed, space_for_kernel(func, target), analytic=True)
    # A tensorized (int8) kernel: the analytic register tile (analytic_int8.py), else the
    # first sample that builds (some vectorize the loop around the intrinsic, which codegen
    # rejects: "Cannot broadcast lanes=16 to 32"; tuning discards those).
    analytic = int8_default_schedule(func, target, cores, seed)
    if analytic is not None:
        return analytic
    for attempt in range(8):
        scheduled = _design_space_sample(func, target, cores, seed + attempt, space_for_kernel(func, target))
        if scheduled is not None and _tvm.builds(scheduled.mod, target):
            return scheduled
    return None


def _design_space_sample(func, target, cores: int, seed: int, space, analytic: bool = False):
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
        if analytic:
            tiled = _analytic_tiles(schedule, context, target)
            if tiled is not None:
                return tiled
            at_root = _at_root(schedule.trace)
            if at_root:
                schedule = _tvm.replay_with_decisions(context.mod, schedule.trace, at_root)
        return schedule if _postprocessed(schedule, context) else None
    except Exception:  # a rule or postprocessor that cannot handle this kernel
        return None


def _postprocessed(schedule, context) -> bool:
    return _tvm.postprocessed(schedule, context.space_generator.postprocs)
