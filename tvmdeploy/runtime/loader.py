"""The thin loader: run an artifact with nothing but TVM's runtime library and numpy.

This module imports nothing from tvmdeploy's compiler side, and it maps only TVM's
runtime library when it is the first to import TVM (see tvm_library.py).

Before any code from the artifact is loaded, the loader checks every file's hash
against the manifest, the CPU architecture and instruction-set flags, and the device
(for CUDA: driver, GPU, compute capability; see devices.py).
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .devices import require_cuda
from ..errors import ArtifactError, InputMismatchError
from .artifact_files import ArtifactFolder
from .artifact_manifest import read_checked_manifest, read_manifest, verify_files
from .parallel_pool import attach as attach_parallel_pool
from .thread_pool import MAX_THREADS, configure_thread_pool, cpu_quota, physical_cores
from .manifest import MANIFEST_NAME, Manifest, TensorSpec
from .weights_file import read_weights
from .inputs import random_inputs
from .host_buffers import HostInputs, host_numpy
from .tvm_library import import_tvm

__all__ = ["LoadedModel", "load", "read_manifest", "verify_files"]

_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


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

    def __init__(self, folder: Path, manifest: Manifest, device: str, threads: int | None, files: ArtifactFolder | None = None):
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
        threads = manifest.threads if threads is None else _checked_threads(threads)
        configure_thread_pool(tvm, threads)
        self._pool = None
        with contextlib.ExitStack() as stack:
            files = files or stack.enter_context(ArtifactFolder(folder))
            # The library is loaded from a private copy of the bytes that were hashed, the
            # weights are parsed from the bytes that were hashed: nothing is re-read by path.
            with files.private_copy(manifest.library, manifest.files[manifest.library]) as copy:
                library = _load_library(tvm, copy, folder, manifest.library)
                if device == "cpu":  # the library's own thread pool, where it has one
                    self._pool = attach_parallel_pool(copy, runtime_threads(threads))
            weights = _read_weights(files, manifest)
        self._vm = tvm.runtime.vm.VirtualMachine(library, self._device)
        self._main = self._vm["main"]
        _check_arity(self._vm, folder, manifest, len(weights))
        # Weights stored beside the library (compact, e.g. after magnitude pruning) are
        # expanded once here and passed after the inputs on every call.
        self._weights = [tvm.runtime.tensor(a, self._device) for a in weights]
        self._host_inputs = HostInputs(tvm, self._device, self.inputs)
        # The Relax VM is not re-entrant: two calls at once on one VM share its frames and
        # storage (4 threads on one digits model: a segfault in StorageObj::AllocTensor).
        # Calls on one model take turns; load the artifact once per thread to run several
        # inferences at the same time.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        ins = ", ".join(s.describe() for s in self.inputs)
        outs = ", ".join(s.describe() for s in self.outputs)
        return f"<tvmdeploy model {self.manifest.model_name} ({self.manifest.preset}): ({ins}) -> ({outs})>"

    def __call__(self, *args: Any, **kwargs: Any) -> list[np.ndarray]:
        """Run once. Inputs positionally in manifest order, or by input name."""
        arrays = self._bind_inputs(args, kwargs)
        with self._lock:  # outputs live in the VM's storage until the next call: copied inside
            outputs = to_numpy(self._run(*self._host_inputs.tensors(arrays), *self._weights))
        self._check_outputs(outputs)
        return outputs

    def _check_outputs(self, outputs: list[np.ndarray]) -> None:
        """The outputs are what the manifest says (-1: a dimension known only at run time);
        an edited manifest otherwise describes outputs the library does not return."""
        for spec, array in zip(self.outputs, outputs):
            if len(spec.shape) != array.ndim or any(d != -1 and d != a for d, a in zip(spec.shape, array.shape)):
                raise ArtifactError(
                    f"{self.path}: the library returned {spec.name} with shape {list(array.shape)}, but "
                    f"{MANIFEST_NAME} says {list(spec.shape)}; the manifest does not describe this "
                    f"library, recompile the artifact"
                )
        if len(outputs) != len(self.outputs):
            raise ArtifactError(
                f"{self.path}: the library returned {len(outputs)} output(s), but {MANIFEST_NAME} lists "
                f"{len(self.outputs)}; the manifest does not describe this library, recompile the artifact"
            )

    def _inference(self):
        return self._pool.inference() if self._pool is not None else contextlib.nullcontext()

    def _run(self, *tensors):
        try:
            with self._inference():
                return self._main(*tensors)
        except Exception as e:
            # Inputs that match the manifest but not the library: the manifest (not covered
            # by its own hashes) was edited, or describes another build.
            raise ArtifactError(
                f"{self.path}: the library rejected inputs that match {MANIFEST_NAME} ({_first_words(e)}); "
                f"the manifest does not describe this library, recompile the artifact"
            ) from None

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
            if spec.index_range is not None:
                _check_index_range(spec, array)
            # Not np.ascontiguousarray: it turns a 0-d input into shape (1,).
            arrays.append(np.require(array, requirements="C"))
        return arrays

    def random_inputs(self, seed: int = 0) -> list[np.ndarray]:
        """One set of inputs with the expected names, shapes and dtypes."""
        return random_inputs(self.inputs, seed)

    def time(self, inputs: Sequence[np.ndarray], warmup: int = 3, repeat: int = 20) -> list[float]:
        """Wall-clock seconds of `repeat` runs after `warmup` runs, inputs already on the device."""
        tensors = [self._tvm.runtime.tensor(a, self._device) for a in self._bind_inputs(inputs, {})]
        tensors += self._weights
        with self._lock:
            for _ in range(warmup):
                self._run(*tensors)
            return time_calls(self._main, tensors, self._device, self._pool, repeat)


def runtime_threads(threads: int) -> int:
    """The thread count an artifact runs on here: `threads` (0: one per physical core),
    capped by the CPU quota of the container."""
    return min(threads or physical_cores(), cpu_quota() or 1 << 16)


def time_calls(main, tensors, device, pool, repeat: int) -> list[float]:
    """Wall-clock seconds of `repeat` calls of `main`, each bracketed as an inference of the
    library's own thread pool (None: TVM's), as the loader runs them."""
    device.sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        with pool.inference() if pool is not None else contextlib.nullcontext():
            main(*tensors)
        device.sync()
        times.append(time.perf_counter() - start)
    return times


def load(
    path: str | os.PathLike,
    device: str | None = None,
    threads: int | None = None,
    trusted_keys: Sequence[str | os.PathLike | bytes] | None = None,
) -> LoadedModel:
    """Verify and load an artifact folder, or a bundle file from `tvmdeploy pack`.

    device: "cpu" or "cuda" (default: the one it was compiled for). threads: runtime
    threads (default: the manifest's, where 0 means one per core). trusted_keys: Ed25519
    public keys (.pub PEM paths or bytes); when given, the manifest must carry a valid
    signature by one of them, checked first (see signing.py).
    """
    if Path(path).is_file():  # a single-file bundle: unpacked safely, then loaded as a folder
        from .bundle import unpacked

        with unpacked(path) as folder:  # removed once the model is loaded (library mapped, weights read)
            model = load(folder, device=device, threads=threads, trusted_keys=trusted_keys)
        model.path = Path(path)
        return model
    with ArtifactFolder(path) as files:
        manifest = read_checked_manifest(files, trusted_keys)
        device = device or manifest.device
        used = {manifest.library, manifest.weights}  # hashed where they are read, just once
        for name, expected in manifest.files.items():
            if name not in used:
                files.verify(name, expected)
        check_machine(files.path, manifest, device)
        return LoadedModel(files.path, manifest, device, threads, files)


def _checked_threads(threads) -> int:
    if isinstance(threads, bool) or not isinstance(threads, int) or not 0 <= threads <= MAX_THREADS:
        raise InputMismatchError(f"threads={threads!r}: give 0 (one per core) up to {MAX_THREADS}")
    return threads


def _load_library(tvm, copy: Path, folder: Path, name: str):
    try:
        return tvm.runtime.load_module(str(copy))
    except Exception as e:  # noqa: BLE001 - TVM's loader error ("invalid ELF header", a missing symbol)
        last = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        if "Failed to load dynamic shared library " in last:  # "... library PATH PATH: dlerror's reason"
            reason = last.split("Failed to load dynamic shared library ")[-1].split(" ", 1)[-1]
        else:
            reason = _first_words(e)
        reason = reason.replace(str(copy), name)[:200]  # the private copy's path means nothing to the user
        raise ArtifactError(
            f"{folder}: {name} is not a library this machine can load ({reason}); recompile the artifact"
        ) from None


def _read_weights(files: ArtifactFolder, manifest: Manifest) -> list[np.ndarray]:
    if manifest.weights == "embedded":
        return []
    data = files.read_verified(manifest.weights, manifest.files[manifest.weights])
    try:
        return read_weights(io.BytesIO(data), manifest.weights)
    except ValueError as e:
        raise ArtifactError(f"{files.path}: {e}; rebuild the artifact") from None


def _check_index_range(spec: TensorSpec, array: np.ndarray) -> None:
    """An input that indexes a table (token ids) holds values inside it: the library
    clamps one that does not (it never reads outside the table), which would run the
    model on a wrong id without a word."""
    low, high = spec.index_range
    if array.size == 0:
        return
    outside = (array < low) | (array >= high)
    if outside.any():
        where = tuple(int(i) for i in np.argwhere(outside)[0])
        raise InputMismatchError(
            f"input '{spec.name}' holds {array[where].item()} at {list(where)}, outside {low}..{high - 1}: "
            f"it indexes a table of {high} entries; pass values in that range"
        )


def _check_arity(vm, folder: Path, manifest: Manifest, weights: int) -> None:
    """The library's main takes the manifest's inputs plus the stored weights, no more, no less."""
    arity = int(vm._get_function_arity("main"))
    if arity != len(manifest.inputs) + weights:
        raise ArtifactError(
            f"{folder}: the library takes {arity} arguments, but {MANIFEST_NAME} lists {len(manifest.inputs)} "
            f"input(s) and {manifest.weights} holds {weights} weight(s); the files do not belong together, recompile"
        )


def _first_words(e: Exception) -> str:
    """A short reason from a TVM error, without its internal check text."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    reason = lines[-1] if lines else type(e).__name__
    return reason.split("Check failed:")[0].rstrip(": ")[:200] or type(e).__name__


def to_numpy(result) -> list[np.ndarray]:
    if hasattr(result, "numpy"):
        return [host_numpy(result)]
    out = []
    for item in result:
        out.extend(to_numpy(item))
    return out
