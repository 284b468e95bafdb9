"""Build: Relax module -> compiled executable -> shared library on disk."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import tvm

from . import _tvm
from ..errors import BuildError, summarize_exception
from .presets import Preset


def library_file_name(preset: Preset) -> str:
    return "model.tar" if preset.build.export_format == "tar" else "model.so"


def build_library(mod: tvm.ir.IRModule, target: tvm.target.Target, preset: Preset, path: Path) -> None:
    """Compile `mod` for `target` and write the library for `preset` to `path`."""
    fcompile = export_compiler(preset)  # checked before the (slow) compile
    try:
        with _device_codegen(target, preset):
            executable = tvm.compile(mod, target=target)
    except BuildError:
        raise
    except Exception as e:
        raise BuildError(f"TVM failed to compile the model for {preset.name}: {summarize_exception(e)}") from e
    try:
        if fcompile is None:
            executable.export_library(str(path))
        else:
            executable.export_library(str(path), fcompile=fcompile)
    except Exception as e:
        raise BuildError(f"exporting the library for {preset.name} failed: {summarize_exception(e)}") from e


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
