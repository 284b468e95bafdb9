"""The one module that touches TVM's unstable, compiler-side Python API.

TVM renames modules between releases (tir -> tirx, meta_schedule -> s_tir.meta_schedule,
contrib.cc -> support.cc, nd.array -> runtime.tensor). Everything tvmdeploy needs from
those places is imported here, so the next rename touches one file.
Never import this module from `tvmdeploy.runtime`: it loads libtvm_compiler.
"""

from __future__ import annotations

import os
import platform
from typing import Any, Callable

import tvm
from tvm import relax
from tvm.target import codegen as _llvm_codegen

# Pinned in pyproject.toml; the manifest records the versions actually used.
TVM_VERSION: str = tvm.__version__

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
    """Triple, CPU name (as LLVM detects it) and core count of this machine."""
    # The bundled LLVM reports the triple it was built with (x86_64-conda-linux-gnu),
    # with which `mcpu` is ignored; the plain GNU triple is what the system toolchain uses.
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    triple = f"{machine}-linux-gnu" if platform.system() == "Linux" else str(
        _llvm_codegen.llvm_get_system_triple()
    )
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return {"mtriple": triple, "mcpu": str(_llvm_codegen.llvm_get_system_cpu()), "num-cores": cores}


def required_cpu_flags(target: tvm.target.Target) -> list[str]:
    """/proc/cpuinfo flags that the CPU code built for `target` (or its host) may use."""
    if target.kind.name != "llvm":
        target = target.host
    if target is None or target.kind.name != "llvm":
        return []
    features = _llvm_codegen.llvm_get_cpu_features(target)
    return sorted({flag for feat, flag in _LLVM_FEATURE_TO_CPUINFO.items() if feat in features})


def cross_compiler(compiler: str, options: list[str]) -> Callable:
    # A fresh function per export: the one cross_compiler returns appends `options`
    # to its own list on every call.
    from tvm.support import cc

    return cc.cross_compiler(compiler, options=list(options))


def runtime_tensor(array, device=None):
    return tvm.runtime.tensor(array, device) if device is not None else tvm.runtime.tensor(array)


__all__ = [
    "TVM_VERSION",
    "cross_compiler",
    "detect_host",
    "is_valid_llvm_cpu",
    "make_target",
    "relax",
    "required_cpu_flags",
    "runtime_tensor",
    "target_to_dict",
    "tvm",
]
