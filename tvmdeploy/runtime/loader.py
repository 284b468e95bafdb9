"""The thin loader: run an artifact with nothing but TVM's runtime library and numpy.

This module imports nothing from tvmdeploy's compiler side, and it maps only TVM's
runtime library when it is the first to import TVM (see tvm_library.py).

Before any code from the artifact is loaded, the loader checks every file's hash
against the manifest, the CPU architecture and instruction-set flags, and the device
(for CUDA: driver, GPU, compute capability; see devices.py).
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .devices import require_cuda
from ..errors import ArtifactError, InputMismatchError
from .manifest import MANIFEST_NAME, SCHEMA_VERSION, Manifest, TensorSpec, sha256_file
from .weights_file import read_weights
from .tvm_library import import_tvm

__all__ = ["LoadedModel", "load", "read_manifest"]

_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read and sanity-check an artifact's manifest (no hashing, no TVM)."""
    folder = Path(path)
    manifest_path = folder / MANIFEST_NAME
    if not folder.exists():
        raise ArtifactError(f"{folder}: no such artifact folder")
    if not manifest_path.is_file():
        raise ArtifactError(f"{folder}: not a tvmdeploy artifact (no {MANIFEST_NAME}); compile one with `tvmdeploy compile`")
    try:
        manifest = Manifest.from_json(manifest_path.read_text())
    except (ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"{manifest_path}: unreadable manifest ({e}); recompile the artifact") from None
    if manifest.schema_version > SCHEMA_VERSION:
        raise ArtifactError(
            f"{manifest_path}: manifest schema {manifest.schema_version} is newer than this "
            f"tvmdeploy understands ({SCHEMA_VERSION}); upgrade tvmdeploy"
        )
    return manifest


def verify_files(folder: Path, manifest: Manifest) -> None:
    if manifest.library not in manifest.files:
        raise ArtifactError(f"{folder}: the manifest lists no hash for its library {manifest.library}")
    for name, expected in manifest.files.items():
        file = folder / name
        if not file.is_file():
            raise ArtifactError(f"{folder}: {name} is missing; the artifact is incomplete, recompile it")
        if sha256_file(file) != expected:
            raise ArtifactError(
                f"{folder}: {name} does not match the sha256 in {MANIFEST_NAME} (modified or corrupted "
                f"after the build); refusing to load it, recompile or re-download the artifact"
            )


def machine_arch() -> str:
    machine = platform.machine().lower()
    return _ARCH_ALIASES.get(machine, machine)


# The /proc/cpuinfo line that lists CPU features, per architecture.
_CPUINFO_FLAGS_KEY = {"x86_64": "flags", "aarch64": "Features"}


def cpu_flags() -> set[str] | None:
    """This CPU's feature flags from /proc/cpuinfo (x86 'flags', arm64 'Features'); None if unknown."""
    key_for_arch = _CPUINFO_FLAGS_KEY.get(machine_arch())
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        # Only this architecture's own key: under qemu-user (before 8.1) an aarch64 process
        # reads the x86 host's cpuinfo, whose 'flags' say nothing about the emulated CPU.
        if key.strip() == key_for_arch:
            return set(value.split())
    return None


def check_machine(folder: Path, manifest: Manifest, device: str) -> None:
    here = machine_arch()
    if manifest.arch != here:
        raise ArtifactError(
            f"{folder}: built for {manifest.arch} (preset {manifest.preset}), but this machine is "
            f"{here}; compile for a {here} preset, or run it on a {manifest.arch} device (e.g. over RPC)"
        )
    flags = cpu_flags()
    if flags is not None:
        missing = [f for f in manifest.cpu_flags if f not in flags]
        if missing:
            raise ArtifactError(
                f"{folder}: built for a CPU with {', '.join(missing)} (preset {manifest.preset}), "
                f"which this CPU lacks; recompile with a preset for this machine, e.g. --target host"
            )
    if device != manifest.device:
        raise ArtifactError(
            f"{folder}: built for device '{manifest.device}' (preset {manifest.preset}), "
            f"cannot run on '{device}'; load it with device='{manifest.device}'"
        )


class LoadedModel:
    """A loaded artifact: call it with numpy arrays, get numpy arrays back."""

    def __init__(self, folder: Path, manifest: Manifest, device: str, threads: int | None):
        tvm = import_tvm()

        self.path = folder
        self.manifest = manifest
        self.inputs: list[TensorSpec] = list(manifest.inputs)
        self.outputs: list[TensorSpec] = list(manifest.outputs)
        self._tvm = tvm
        if device == "cuda":  # driver, GPU and its compute capability; loads TVM's CUDA runtime
            require_cuda(manifest.compute_capability, f"{folder} (preset {manifest.preset})")
        self._device = tvm.runtime.device(device, 0)
        if device != "cpu" and not self._device.exist:
            raise ArtifactError(
                f"{folder}: needs a {device} device, but none is present (no GPU or no driver); "
                f"run it on a machine with one"
            )
        nthreads = manifest.threads if threads is None else threads
        if nthreads:
            _set_threads(tvm, nthreads)
        library = tvm.runtime.load_module(str(folder / manifest.library))
        self._vm = tvm.runtime.vm.VirtualMachine(library, self._device)
        self._main = self._vm["main"]
        # Weights stored beside the library (compact, e.g. after magnitude pruning) are
        # expanded once here and passed after the inputs on every call.
        self._weights = []
        if manifest.weights != "embedded":
            try:
                arrays = read_weights(folder / manifest.weights)
            except ValueError as e:
                raise ArtifactError(f"{folder}: {e}; rebuild the artifact") from None
            self._weights = [tvm.runtime.tensor(a, self._device) for a in arrays]

    def __repr__(self) -> str:
        ins = ", ".join(s.describe() for s in self.inputs)
        outs = ", ".join(s.describe() for s in self.outputs)
        return f"<tvmdeploy model {self.manifest.model_name} ({self.manifest.preset}): ({ins}) -> ({outs})>"

    def __call__(self, *args: Any, **kwargs: Any) -> list[np.ndarray]:
        """Run once. Inputs positionally in manifest order, or by input name."""
        arrays = self._bind_inputs(args, kwargs)
        tensors = [self._tvm.runtime.tensor(a, self._device) for a in arrays]
        result = self._main(*tensors, *self._weights)
        return to_numpy(result)

    def _bind_inputs(self, args: Sequence[Any], kwargs: dict[str, Any]) -> list[np.ndarray]:
        names = [s.name for s in self.inputs]
        if args and kwargs:
            raise InputMismatchError("pass inputs either all positionally or all by name, not mixed")
        if kwargs:
            unknown = [k for k in kwargs if k not in names]
            missing = [n for n in names if n not in kwargs]
            if unknown or missing:
                raise InputMismatchError(
                    "inputs by name: "
                    + (f"unknown {', '.join(map(repr, unknown))}; " if unknown else "")
                    + (f"missing {', '.join(map(repr, missing))}; " if missing else "")
                    + f"expected {', '.join(s.describe() for s in self.inputs)}"
                )
            args = [kwargs[n] for n in names]
        if len(args) != len(self.inputs):
            raise InputMismatchError(
                f"expected {len(self.inputs)} input(s) ({', '.join(s.describe() for s in self.inputs)}), got {len(args)}"
            )
        arrays = []
        for spec, value in zip(self.inputs, args):
            array = np.asarray(value)
            if array.dtype != np.dtype(spec.dtype):
                raise InputMismatchError(
                    f"input '{spec.name}' has dtype {array.dtype}, expected {spec.dtype} "
                    f"(convert with .astype('{spec.dtype}'))"
                )
            if tuple(array.shape) != spec.shape:
                raise InputMismatchError(
                    f"input '{spec.name}' has shape {list(array.shape)}, expected {list(spec.shape)} "
                    f"(the artifact is compiled for that shape; recompile with --input-shape for another)"
                )
            # ascontiguousarray turns a 0-d array (a scalar input) into shape (1,)
            arrays.append(np.ascontiguousarray(array).reshape(array.shape))
        return arrays

    def random_inputs(self, seed: int = 0) -> list[np.ndarray]:
        """One set of inputs with the expected names, shapes and dtypes."""
        rng = np.random.default_rng(seed)
        arrays = []
        for spec in self.inputs:
            dtype = np.dtype(spec.dtype)
            if dtype.kind == "f":
                arrays.append(rng.standard_normal(spec.shape).astype(dtype))
            elif dtype.kind == "b":
                arrays.append(rng.integers(0, 2, spec.shape).astype(dtype))
            else:
                arrays.append(rng.integers(0, 10, spec.shape).astype(dtype))
        return arrays

    def time(self, inputs: Sequence[np.ndarray], warmup: int = 3, repeat: int = 20) -> list[float]:
        """Wall-clock seconds of `repeat` runs after `warmup` runs, inputs already on the device."""
        tensors = [self._tvm.runtime.tensor(a, self._device) for a in self._bind_inputs(inputs, {})]
        tensors += self._weights
        for _ in range(warmup):
            self._main(*tensors)
        self._device.sync()
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            self._main(*tensors)
            self._device.sync()
            times.append(time.perf_counter() - start)
        return times


def load(path: str | os.PathLike, device: str | None = None, threads: int | None = None) -> LoadedModel:
    """Verify and load an artifact folder.

    device: "cpu" or "cuda" (default: the one it was compiled for). threads: runtime
    threads (default: the manifest's, where 0 means one per core).
    """
    folder = Path(path)
    manifest = read_manifest(folder)
    device = device or manifest.device
    verify_files(folder, manifest)
    check_machine(folder, manifest, device)
    return LoadedModel(folder, manifest, device, threads)


def _set_threads(tvm, nthreads: int) -> None:
    config = tvm.get_global_func("runtime.config_threadpool", allow_missing=True)
    if config is not None:
        config(0, int(nthreads))  # 0: big cores first (the default affinity mode)


def to_numpy(result) -> list[np.ndarray]:
    if hasattr(result, "numpy"):
        return [result.numpy()]
    out = []
    for item in result:
        out.extend(to_numpy(item))
    return out
