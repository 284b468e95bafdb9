"""The one module that touches TVM's unstable, compiler-side Python API.

TVM renames modules between releases (tir -> tirx, meta_schedule -> s_tir.meta_schedule,
contrib.cc -> support.cc, nd.array -> runtime.tensor). Everything tvmdeploy needs from
those places is imported here, so the next rename touches one file.
Never import this module from `tvmdeploy.runtime`: it loads libtvm_compiler.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
import platform
import sys
import types
from typing import Any, Callable

import tvm
import tvm_ffi
from tvm import relax, te, tirx, topi
from tvm.s_tir import Schedule, TensorIntrin
from tvm.s_tir import meta_schedule as ms
from tvm.script import tirx as T  # TVMScript for kernels (kernels/*.py)
from tvm.target import codegen as _llvm_codegen

# Pinned in pyproject.toml; the manifest records the versions actually used.
TVM_VERSION: str = tvm.__version__

PrimFunc = tirx.PrimFunc
BufferType = tirx.BufferType  # a PrimFunc parameter's type when it is a buffer (0.27: no buffer_map)
structural_equal = tvm_ffi.structural_equal  # was tvm.ir.structural_equal
TIR_EXP_OP = "tirx.exp"  # the TIR op name MetaSchedule's rules may be told to avoid
# TVM's OpPatternKind, a PrimFunc's "op_pattern" attribute (FuseOps reads it;
# AnnotateTIROpPattern leaves a kernel that has one as it is).
OP_PATTERN_INJECTIVE = 2  # kInjective: fuses into the injective and reducing ops around it
OP_PATTERN_OUT_ELEMWISE_FUSABLE = 4  # kOutEWiseFusable: a conv's; the elementwise ops after it fuse in
OP_PATTERN_OPAQUE = 8  # kOpaque: fuses with nothing
RelaxConstant = tvm.ir.GenericConst  # a Relax constant (was relax.Constant)
REDUCE_ITER = tirx.IterVar.CommReduce  # a block's reduction axis kind (iter_type)
METASCHEDULE_LOGGER = "tvm.s_tir.meta_schedule"
# Set on a PrimFunc once a schedule (tuned or default) has been applied to it.
_SCHEDULED_ATTR = "tirx.is_scheduled"


def is_scheduled(func) -> bool:
    return func.attrs is not None and bool(func.attrs.get(_SCHEDULED_ATTR, False))


def mark_scheduled(func, symbol: str):
    """A scheduled kernel under its own global symbol (two kernels both named `main` clash)."""
    return func.with_attr("global_symbol", symbol).with_attr(_SCHEDULED_ATTR, True)


# --- The TIR build pipeline: TVM's default, plus register tiles on the stack -------------
#
# TVM's LowerTVMBuiltin gives every CPU buffer a heap workspace (TVMBackendAllocWorkspace
# + free, per parallel task) unless it is "global" and under 1 KiB, and that includes the
# "local" register tile of our conv and dense kernels. LLVM keeps a heap tile in registers
# only across straight-line code: behind the bounds checks of a depthwise conv every
# multiply-add stored its accumulator back to memory (28x28x192 3x3 depthwise: 93 us,
# 50 us with the tile on the stack). Allocations marked "disable_lower_builtin" stay
# allocas, which LLVM promotes to registers.
TIR_PIPELINE = "tvmdeploy"
STACK_TILE_BYTES = 4096  # register tiles are at most 32 vectors of 64 bytes (2 KiB)


def _allocation_bytes(buffer) -> int | None:
    count = 1
    for extent in buffer.shape:
        if not isinstance(extent, tirx.IntImm):
            return None
        count *= int(extent)
    return count * tvm.DataType(str(buffer.dtype)).bits // 8


def _tile_on_stack(alloc):
    buffer = alloc.buffer
    size = _allocation_bytes(buffer)
    if buffer.scope() != "local" or size is None or not 0 < size <= STACK_TILE_BYTES:
        return alloc
    annotations = dict(alloc.annotations)
    annotations["disable_lower_builtin"] = tirx.IntImm("int32", 1)
    return tirx.AllocBuffer(buffer, annotations)


@tvm.transform.module_pass(opt_level=0, name="RegisterTilesOnStack")
def register_tiles_on_stack(mod, _ctx):
    functions = {
        gv: tvm_ffi.structural_map(func, (tirx.AllocBuffer, _tile_on_stack)) if isinstance(func, tirx.PrimFunc) else func
        for gv, func in mod.functions_items()
    }
    return tvm.IRModule(functions, attrs=mod.attrs)


def _tvmdeploy_tir_pipeline():
    from tvm.s_tir.pipeline import default_s_tir_pipeline

    lower, finalize_host, finalize_device = default_s_tir_pipeline()
    return lower, lambda: tvm.transform.Sequential([register_tiles_on_stack, finalize_host()]), finalize_device


tirx.register_tir_pipeline(TIR_PIPELINE, _tvmdeploy_tir_pipeline)
TIR_PIPELINE_PASSES = (register_tiles_on_stack,)  # ours, run in every build beside TVM's


def compile_executable(mod, target, **options):
    """tvm.compile with tvmdeploy's TIR pipeline (every build: artifacts, tuning, checks)."""
    return tvm.compile(mod, target=target, tir_pipeline=TIR_PIPELINE, **options)


# LLVM feature name -> the flag the Linux kernel reports in /proc/cpuinfo for it.
# The loader refuses an artifact whose required flags the CPU lacks, instead of
# dying with SIGILL in the middle of a run.
_LLVM_FEATURE_TO_CPUINFO = {
    # x86-64
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512dq": "avx512dq",
    "avx512vl": "avx512vl",
    "avx512cd": "avx512cd",
    "avx512vnni": "avx512_vnni",
    "avxvnni": "avx_vnni",
    "avx512bf16": "avx512_bf16",
    "amx-int8": "amx_int8",
    "amx-tile": "amx_tile",
    "amx-bf16": "amx_bf16",
    "avx512fp16": "avx512_fp16",
    "avx512vbmi": "avx512vbmi",
    "avx512vbmi2": "avx512_vbmi2",
    "avx512ifma": "avx512ifma",
    "avx512bitalg": "avx512_bitalg",
    "avx512vpopcntdq": "avx512_vpopcntdq",
    "bmi2": "bmi2",
    # aarch64 (kernel names from arch/arm64/kernel/cpuinfo.c)
    "neon": "asimd",
    "dotprod": "asimddp",
    "fullfp16": "asimdhp",
    "i8mm": "i8mm",
    "sve": "sve",
    "sve2": "sve2",
    "bf16": "bf16",
}


def make_target(target: dict[str, Any], host: dict[str, Any] | None = None) -> tvm.target.Target:
    """Build a Target from its JSON-dict form (the string form with options is gone)."""
    if host is not None:
        return tvm.target.Target(target, host=host)
    return tvm.target.Target(target)


def target_to_dict(target: tvm.target.Target) -> dict[str, Any]:
    """The canonical, JSON-serializable form of a target (for manifests and cache keys)."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict) or hasattr(value, "items"):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)) or (
            hasattr(value, "__iter__") and not isinstance(value, (str, bytes))
        ):
            return [plain(v) for v in value]
        if isinstance(value, (bool, int, float)) or value is None:
            return value
        return str(value)

    return plain(target.export())


def is_valid_llvm_cpu(mtriple: str, mcpu: str) -> bool:
    return bool(_llvm_codegen.llvm_is_valid_cpu(mcpu, mtriple))


def detect_host() -> dict[str, Any]:
    """Triple, CPU name (as LLVM detects it), core count, and the features to turn off.

    A virtual machine may hide features its CPU model implies (seen: an Emerald Rapids
    guest without AMX, AVX-VNNI or AVX512-BF16 in /proc/cpuinfo). LLVM's CPU name alone
    would then emit instructions this machine cannot run, so each implied feature that
    /proc/cpuinfo lacks is switched off in `mattr` ("-amx-int8", ...).
    """
    from ..runtime.loader import cpu_flags, machine_arch

    machine = machine_arch()
    # The bundled LLVM reports the triple it was built with (x86_64-conda-linux-gnu),
    # with which `mcpu` is ignored; the plain GNU triple is what the system toolchain uses.
    triple = f"{machine}-linux-gnu" if platform.system() == "Linux" else str(
        _llvm_codegen.llvm_get_system_triple()
    )
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    detected: dict[str, Any] = {"mtriple": triple, "mcpu": str(_llvm_codegen.llvm_get_system_cpu()), "num-cores": cores}
    present = cpu_flags()
    if present is not None:
        implied = _llvm_codegen.llvm_get_cpu_features(make_target({"kind": "llvm", **detected}))
        detected["mattr"] = sorted(
            f"-{feature}" for feature, flag in _LLVM_FEATURE_TO_CPUINFO.items() if feature in implied and flag not in present
        )
    return detected


def required_cpu_flags(target: tvm.target.Target) -> list[str]:
    """/proc/cpuinfo flags that the CPU code built for `target` (or its host) may use."""
    if target.kind.name != "llvm":
        target = target.host
    if target is None or target.kind.name != "llvm":
        return []
    features = _llvm_codegen.llvm_get_cpu_features(target)
    return sorted({flag for feat, flag in _LLVM_FEATURE_TO_CPUINFO.items() if feat in features})


def cpu_features(target: tvm.target.Target) -> set[str]:
    """LLVM feature names (avx2, avx512vnni, dotprod...) of an llvm target; empty otherwise."""
    if target.kind.name != "llvm":
        return set()
    return set(_llvm_codegen.llvm_get_cpu_features(target))


def cross_compiler(compiler: str, options: list[str]) -> Callable:
    # A fresh function per export: the one cross_compiler returns appends `options`
    # to its own list on every call.
    from tvm.support import cc

    return cc.cross_compiler(compiler, options=list(options))


def host_compiler() -> str:
    """The C compiler TVM links host libraries with ($CXX/$CC, else the first of g++, gcc, ...)."""
    from tvm.support import cc

    return cc.get_cc() or "cc"


def indexes_by_loaded_values(prim_func) -> bool:
    """Whether some load or store of the kernel is indexed by values loaded from a buffer
    (a gather or scatter: `x[idx[i], j]`)."""
    found = []

    def check(access):
        for index in access.indices:
            tvm_ffi.structural_walk(index, (tvm.ir.TensorLoad, found.append))

    tvm_ffi.structural_walk(prim_func, [(tvm.ir.TensorLoad, check), (tirx.stmt.BufferStore, check)])
    return bool(found)


def estimate_flops(prim_func) -> float:
    from tvm.s_tir.analysis import estimate_tir_flops

    return float(estimate_tir_flops(prim_func))


def register_tvm_tensor_intrinsics(target_kind: str = "llvm") -> None:
    """Register TVM's own tensor intrinsics (x86 VNNI/AVX-512, ARM NEON/sdot) schedules may use.

    `import tvm.s_tir.tensor_intrin` registers every platform's, and the CUDA ones take
    ~22 s on this machine; the CPU ones ~1 s. MetaSchedule imports the package (in
    TuneContext and in its default builder), so the package is made present without
    running its __init__, and only the submodules the target needs are imported (the
    CPU ones always, CUDA's for "cuda").
    Idempotent; used in-process and as the builder workers' initializer.
    """
    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        package = types.ModuleType(name)
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        package.__package__ = name
        sys.modules[name] = package
    importlib.import_module(f"{name}.x86")
    importlib.import_module(f"{name}.arm_cpu")
    if target_kind == "cuda":
        # Explicitly: once a CPU registration put the package in sys.modules without its
        # __init__, importing the package no longer brings the CUDA ones in.
        importlib.import_module(f"{name}.cuda")


def arg_bytes(prim_func) -> list[int]:
    """Bytes of each of a kernel's tensor arguments (static shapes)."""
    import numpy as np

    return [
        math.prod(int(d) for d in info.shape) * np.dtype(str(info.dtype)).itemsize
        for info in ms.arg_info.ArgInfo.from_prim_func(prim_func)
    ]


def buffer_bytes(buffer) -> int:
    """Bytes of a TIR buffer of static shape."""
    return math.prod(int(d) for d in buffer.shape) * buffer.dtype.bits // 8


def tiled_blocks(trace, tensorized_only: bool = False) -> list[list[tuple[Any, int, int]]]:
    """MetaSchedule's multi-level tiling in a trace: per tiled block, its loops' tile
    instructions as (instruction, loop extent, tile count), in loop order.
    tensorized_only: only blocks MetaSchedule tensorizes (a tiling annotated
    "meta_schedule.auto_tensorize" by MultiLevelTilingWithIntrin before its tiles are sampled)."""
    groups: list[tuple[bool, list]] = []  # (tensorized, tiles)
    for inst in trace.insts:
        kind = inst.kind.name
        attrs = str(inst.attrs) if kind == "Annotate" else ""
        if "meta_schedule.tiling_structure" in attrs:
            groups.append((False, []))
        elif "meta_schedule.auto_tensorize" in attrs and groups and not groups[-1][1]:
            groups[-1] = (True, groups[-1][1])
        elif kind == "SamplePerfectTile" and groups:
            decision = [int(d) for d in trace.decisions[inst]]
            groups[-1][1].append((inst, math.prod(decision), len(decision)))
    return [tiles for tensorized, tiles in groups if tensorized or not tensorized_only]


def builds(mod, target) -> bool:
    """Whether codegen accepts a scheduled module (some schedules that pass every
    postprocessor still fail there, e.g. a vector loop around a tensor intrinsic)."""
    try:
        with native_stderr_to(None):
            compile_executable(mod, target)
        return True
    except Exception:  # noqa: BLE001 - TVM's codegen errors vary
        return False


def postprocessed(schedule, postprocs) -> bool:
    """Apply MetaSchedule postprocessors, marked as such in the trace (as its search does:
    a search starting from this schedule strips and re-applies them)."""
    schedule.enter_postproc()
    return all(postproc.apply(schedule) for postproc in postprocs)


def unroll_choices(trace) -> list[tuple[Any, list[int]]]:
    """The trace's categorical samples (the unroll step choice) with their candidates."""
    return [(inst, [int(c) for c in inst.attrs[0]]) for inst in trace.insts if inst.kind.name == "SampleCategorical"]


def compute_location_choices(trace) -> list:
    """The trace's SampleComputeLocation instructions (decision -1: the block at root)."""
    return [inst for inst in trace.insts if inst.kind.name == "SampleComputeLocation"]


COMPUTE_AT_ROOT = -1  # a SampleComputeLocation decision: the block stays at the root


def replay_with_decisions(mod, trace, decisions: dict):
    """A Schedule of `mod` from `trace` with some sampling decisions replaced (postprocessors not applied)."""
    for inst, decision in decisions.items():
        trace = trace.with_decision(inst, decision, remove_postproc=True)
    schedule = tvm.s_tir.Schedule(mod)
    trace.apply_to_schedule(schedule, remove_postproc=True)
    return schedule


def cpu_space(max_vectorize_extent: int = 64, parallel: bool = True):
    """MetaSchedule's default llvm design space (TVM's DefaultLLVM rules) with its
    ParallelizeVectorizeUnroll rule given this vector extent and, for parallel=False, no
    parallel loops (a target with num-cores 1 is not enough: the rule still parallelizes
    up to num-cores x 16 jobs)."""
    rules = [
        ms.schedule_rule.ParallelizeVectorizeUnroll(
            max_jobs_per_core=16 if parallel else -1, max_vectorize_extent=int(max_vectorize_extent),
            unroll_max_steps=[0, 16, 64, 512], unroll_explicit=True,
        )
        if isinstance(rule, ms.schedule_rule.ParallelizeVectorizeUnroll)
        else rule
        for rule in ms.ScheduleRule.create("llvm")
    ]
    return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs="llvm", mutator_probs="llvm")


def serial_cpu_space(max_vectorize_extent: int = 64):
    return cpu_space(max_vectorize_extent, parallel=False)


@tvm.ir.utils.derived_object
class DeadlineSearch(ms.search_strategy.PySearchStrategy):
    """EvolutionarySearch that reports "no more candidates" once the deadline passes, or
    once its search finds nothing it has not measured (the space is exhausted).

    The task scheduler then terminates the task through its normal path and still joins
    the batches in flight, so their records are kept and tune_tasks returns normally.
    (Raising from a callback, or terminate_task from one, trips the scheduler's checks.)
    `converged` (optional): asked before each batch; True ends the task the same way.
    EvolutionarySearch itself answers an exhausted space with an empty batch, which
    counts no trial: the scheduler kept asking it (7 s of search each time) until the
    clock ran out, 46 of a 60-minute run's minutes on ResNet-50 after its 1,050th trial.
    """

    def __init__(self, inner, deadline, on_submit=None, on_exhausted=None, converged=None):
        self.inner = inner
        self.deadline = deadline
        self.on_submit = on_submit
        self.on_exhausted = on_exhausted
        self.converged = converged

    def _initialize_with_tune_context(self, context) -> None:
        self.inner._initialize_with_tune_context(context)

    def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database=None, cost_model=None):
        self.inner.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database, cost_model)

    def post_tuning(self) -> None:
        self.inner.post_tuning()

    def generate_measure_candidates(self):
        if self.deadline.passed() or (self.converged is not None and self.converged()):
            return None
        candidates = self.inner.generate_measure_candidates()
        if candidates is not None and len(candidates) == 0:
            if self.on_exhausted is not None:
                self.on_exhausted()
            return None
        if candidates and self.on_submit is not None:
            self.on_submit(len(candidates))
        return candidates

    def notify_runner_results(self, measure_candidates, results) -> None:
        self.inner.notify_runner_results(measure_candidates, results)

    def clone(self):
        return DeadlineSearch(self.inner.clone(), self.deadline, self.on_submit, self.on_exhausted, self.converged)


@tvm.ir.utils.derived_object
class PooledBuilder(ms.builder.PyBuilder):
    """MetaSchedule's LocalBuilder with one worker pool for the whole tuning run.

    LocalBuilder starts a fresh pool for every batch (and one more to check its build
    functions), each worker importing TVM and registering our intrinsics: ~4 s a batch on
    2 cores, 39 of 65 s of a 16-trial int8 tuning run. Workers here are replaced after
    `recycle_after` builds instead (the memory growth LocalBuilder's fresh pools avoid).
    Same worker function, timeouts and result messages as LocalBuilder."""

    def __init__(self, f_build, f_export, initializer, max_workers: int, timeout_sec: float, recycle_after: int = 64):
        from tvm.support.popen_pool import PopenPoolExecutor

        self.f_build, self.f_export, self.timeout_sec = f_build, f_export, timeout_sec
        self.pool = PopenPoolExecutor(
            max_workers=max_workers, timeout=timeout_sec, initializer=initializer, maximum_process_uses=recycle_after,
        )

    def build(self, build_inputs):
        from tvm.s_tir.meta_schedule.builder.local_builder import _serialize_params, _worker_func
        from tvm.support.popen_pool import StatusKind

        jobs = [(self.f_build, self.f_export, b.mod, b.target, _serialize_params(b.params)) for b in build_inputs]
        results = []
        for done in self.pool.map_with_error_catching(lambda job: _worker_func(*job), jobs):
            if done.status == StatusKind.COMPLETE:
                results.append(ms.builder.BuilderResult(done.value, None))
            elif done.status == StatusKind.TIMEOUT:
                results.append(ms.builder.BuilderResult(None, f"LocalBuilder: Timeout, killed after {self.timeout_sec} seconds"))
            else:
                results.append(ms.builder.BuilderResult(None, "LocalBuilder: An exception occurred\n" + str(done.value)))
        return results

    def close(self) -> None:
        self.pool.shutdown()


@contextlib.contextmanager
def native_stderr_to(path: str | os.PathLike | None):
    """Send what TVM's C++ code writes to stderr (LOG(WARNING)) to a file, or discard it.

    Python's sys.stderr is unaffected; only file descriptor 2 is redirected.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    target = os.open(os.fspath(path) if path else os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(target, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(target)


def metaschedule_build(mod, target, _params):
    """The MetaSchedule builder's build function, minus the tensor-intrinsic import.

    MetaSchedule's default imports tvm.s_tir.tensor_intrin in every fresh builder worker
    (18-35 s here), so every candidate hits the builder timeout and a tuning run records
    nothing. Module-level, so the popen worker unpickles it by reference.
    """
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target, pipeline=TIR_PIPELINE)


def nvcc_fatbin(code: str, arch: str) -> bytes:
    """CUDA C++ -> fatbin with SASS for `arch` (e.g. sm_80) and its PTX, with nvcc.

    The PTX lets a newer GPU (e.g. sm_90 for an sm_80 build) JIT the kernels; the SASS
    saves the JIT on the preset's own GPU. TVM's default compile callback uses NVRTC
    through the optional `cuda-bindings` package and the arch of a GPU in this machine.
    """
    from tvm.support import nvcc

    virtual = arch.replace("sm_", "compute_")
    gencode = ["-gencode", f"arch={virtual},code={arch}", "-gencode", f"arch={virtual},code={virtual}"]
    # compile_cuda reads the major version from the current target (or a local GPU).
    with tvm.target.Target({"kind": "cuda", "arch": arch}):
        try:
            return bytes(nvcc.compile_cuda(code, target_format="fatbin", arch=gencode, compiler="nvcc"))
        except RuntimeError as e:
            # nvcc's output ends with "N errors detected in ..."; the first error is the one to act on.
            errors = [line.strip() for line in str(e).splitlines() if ": error" in line or "fatal" in line]
            raise RuntimeError(f"nvcc failed on TVM's generated CUDA for {arch}: {errors[0] if errors else e}") from None


CUDA_COMPILE_CALLBACK = "tvm_callback_cuda_compile"


def use_nvcc_for_cuda(arch: str):
    """Make TVM compile CUDA kernels with nvcc_fatbin for `arch`; returns the previous callback."""
    previous = tvm_ffi.get_global_func(CUDA_COMPILE_CALLBACK, allow_missing=True)
    tvm_ffi.register_global_func(CUDA_COMPILE_CALLBACK, functools.partial(nvcc_fatbin, arch=arch), override=True)
    return previous


@contextlib.contextmanager
def nvcc_for_cuda(arch: str):
    previous = use_nvcc_for_cuda(arch)
    try:
        yield
    finally:
        if previous is not None:
            tvm_ffi.register_global_func(CUDA_COMPILE_CALLBACK, previous, override=True)


def dlight_gpu_default_schedule():
    """The pass that gives every unscheduled GPU kernel dlight's default schedule.

    The same rules, in the same order, as TVM's cuda pipeline (relax/backend/cuda/pipeline.py).
    """
    from tvm.s_tir import dlight as dl

    return dl.ApplyDefaultSchedule(
        dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()
    )


def metaschedule_cross_export(compiler: str, options: list[str], mod) -> str:
    """A MetaSchedule builder export that links each candidate with a cross compiler.

    The default export writes a .tar that the device must link itself, which a board
    with only TVM's runtime cannot. Module-level: bound with functools.partial, it
    pickles by reference into the builder's worker processes.
    """
    import tempfile

    path = os.path.join(tempfile.mkdtemp(prefix="tvmdeploy-ms-"), "candidate.so")
    mod.export_library(path, fcompile=cross_compiler(compiler, options))
    return path


def metaschedule_alloc_from_host(session, device, args_info, alloc_repeat):
    """MetaSchedule RPC runner argument allocation, with the random data made here.

    The default fills arguments with tvm.contrib.random on the device, which the pip
    wheels' runtime-only library lacks; these arrays are random numpy uploaded over RPC.
    """
    import numpy as np
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common

    from ..runtime.inputs import random_array

    rng = np.random.default_rng(0)

    def fill(tensor) -> None:
        tensor.copyfrom(random_array(tensor.shape, tensor.dtype, rng))

    return alloc_argument_common(fill, device, args_info, alloc_repeat)


__all__ = [
    "TVM_VERSION",
    "arg_bytes",
    "cpu_features",
    "cross_compiler",
    "detect_host",
    "dlight_gpu_default_schedule",
    "is_valid_llvm_cpu",
    "estimate_flops",
    "make_target",
    "metaschedule_alloc_from_host",
    "metaschedule_build",
    "metaschedule_cross_export",
    "native_stderr_to",
    "nvcc_fatbin",
    "nvcc_for_cuda",
    "ms",
    "register_tvm_tensor_intrinsics",
    "replay_with_decisions",
    "compute_location_choices",
    "COMPUTE_AT_ROOT",
    "buffer_bytes",
    "tiled_blocks",
    "builds",
    "postprocessed",
    "unroll_choices",
    "cpu_space",
    "serial_cpu_space",
    "DeadlineSearch",
    "METASCHEDULE_LOGGER",
    "PrimFunc",
    "TIR_EXP_OP",
    "RelaxConstant",
    "T",
    "Schedule",
    "TensorIntrin",
    "is_scheduled",
    "mark_scheduled",
    "te",
    "tirx",
    "topi",
    "relax",
    "required_cpu_flags",
    "target_to_dict",
    "use_nvcc_for_cuda",
    "tvm",
]


# ---- Frontends: the importers' internals tvmdeploy checks a model against before converting.


def onnx_convert_map() -> dict:
    """Op type -> converter of TVM's ONNX importer (what it can import)."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    return _get_convert_map()


# Ops TVM's ONNX importer converts itself, outside its converter map (_construct_nodes).
ONNX_DIRECTLY_HANDLED_OPS = frozenset({"If", "Constant"})


def torch_convert_map() -> dict:
    """ATen target name ("conv2d.default") -> converter of TVM's ExportedProgram importer."""
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    return ExportedProgramImporter().convert_map


def tflite_operator_converter(model):
    """TVM's TFLite operator converter for subgraph 0 of a parsed tflite.Model, used only to
    name each operator (`get_op_code_str`) and look it up in `convert_map`."""
    from tvm.relax.frontend.tflite.tflite_frontend import ExprTable, OperatorConverter

    return OperatorConverter(model, model.Subgraphs(0), ExprTable(), None)


def tflite_tensor_name(subgraph, index: int) -> str:
    """The name TVM's TFLite importer gives a tensor (its Relax parameter name for an input)."""
    from tvm.relax.frontend.tflite.tflite_frontend import get_tensor_name

    return get_tensor_name(subgraph, index)
