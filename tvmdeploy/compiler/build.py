"""Build: Relax module -> compiled executable -> shared library on disk."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import tvm

from . import _tvm
from ..errors import BuildError, summarize_exception
from .presets import Preset


def library_file_name(preset: Preset) -> str:
    return "model.tar" if preset.build.export_format == "tar" else "model.so"


# tvmdeploy's thread pool (see the file), linked into every shared library for a Linux CPU.
PARALLEL_POOL_SOURCE = Path(__file__).parent / "native" / "parallel_pool.c"


def build_pass_names() -> list[str]:
    """The passes of ours that every build runs (inside TVM's TIR pipeline)."""
    return [str(p.info.name) for p in _tvm.TIR_PIPELINE_PASSES]


def build_library(mod: tvm.ir.IRModule, target: tvm.target.Target, preset: Preset, path: Path) -> str:
    """Compile `mod` for `target` and write the library for `preset` to `path`; returns the
    thread pool its parallel kernels can run on ("tvmdeploy" or "tvm")."""
    fcompile = export_compiler(preset)  # checked before the (slow) compile
    try:
        with _device_codegen(target, preset):
            executable = _tvm.compile_executable(mod, target)
    except BuildError:
        raise
    except Exception as e:
        raise BuildError(f"TVM failed to compile the model for {preset.name}: {summarize_exception(e)}") from e
    with tempfile.TemporaryDirectory(prefix="tvmdeploy-build-") as scratch:
        pool = parallel_pool_object(target, preset, Path(scratch))
        extra = {"addons": [str(pool)], "options": ["-pthread"]} if pool else {}
        try:
            if fcompile is None:
                executable.export_library(str(path), **extra)
            else:
                executable.export_library(str(path), fcompile=fcompile, **extra)
        except Exception as e:
            raise BuildError(f"exporting the library for {preset.name} failed: {summarize_exception(e)}") from e
    return "tvmdeploy" if pool else "tvm"


def parallel_pool_object(target: tvm.target.Target, preset: Preset, folder: Path) -> Path | None:
    """The thread pool compiled for the preset (None where it does not apply: GPU targets,
    object-file exports, non-Linux triples)."""
    triple = str(target.attrs.get("mtriple", "")) if target.kind.name == "llvm" else ""
    if "linux" not in triple or preset.build.export_format != "so":
        return None
    compiler = preset.build.cross_compiler or _tvm.host_compiler()
    sysroot = [f"--sysroot={preset.build.sysroot}"] if preset.build.sysroot else []
    out = folder / "parallel_pool.o"
    command = [compiler, *sysroot, "-x", "c", "-std=gnu11", "-O2", "-fPIC", "-c", str(PARALLEL_POOL_SOURCE), "-o", str(out)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BuildError(f"exporting the library for {preset.name} failed: {compiler} could not compile its thread pool ({e})") from None
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise BuildError(f"exporting the library for {preset.name} failed: {compiler} could not compile its thread pool ({detail})")
    return out


def _device_codegen(target: tvm.target.Target, preset: Preset):
    """GPU targets: kernels compiled ahead of time into the library (see cuda_build)."""
    if target.kind.name != "cuda":
        return contextlib.nullcontext()
    from .cuda_build import cuda_codegen

    return cuda_codegen(str(target.attrs["arch"]), preset.name)


def cross_linker_options(preset: Preset) -> list[str]:
    """The preset's options for its cross linker: its own, then its sysroot."""
    facts = preset.build
    return [*facts.linker_options, *([f"--sysroot={facts.sysroot}"] if facts.sysroot else [])]


def require_cross_compiler(preset: Preset) -> None:
    """A missing cross compiler: one line naming the packages that provide it."""
    facts = preset.build
    if facts.cross_compiler and shutil.which(facts.cross_compiler) is None:
        packages = " ".join(facts.cross_compiler_packages) or "the toolchain that provides it"
        raise BuildError(
            f"preset {preset.name} cross-compiles with '{facts.cross_compiler}', which is not "
            f"installed; on Debian/Ubuntu: sudo apt-get install {packages}"
        )


def export_compiler(preset: Preset):
    """The linker for the library: None for the host's own, or the preset's cross compiler."""
    facts = preset.build
    if facts.export_format == "tar":
        return None  # object files in a tar: linked on the device, no compiler needed here
    if not facts.cross_compiler:
        return None
    require_cross_compiler(preset)
    return _tvm.cross_compiler(facts.cross_compiler, cross_linker_options(preset))
