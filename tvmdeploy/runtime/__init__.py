"""The deploy side: what runs an artifact on a device, with TVM's runtime library and numpy.

Nothing here imports `tvmdeploy.compiler`. The first module that needs TVM imports it
through `tvm_library.import_tvm`, which maps only libtvm_runtime.so when the process has
not imported TVM yet (a deployment process never maps TVM's compiler library).

- loader: verify an artifact folder and load it (`load`, `LoadedModel`)
- manifest: the artifact's manifest (read here, written by the compiler's packaging)
- weights_file: compact weights stored beside the library
- devices: GPU driver / device / compute-capability checks
- bench: latency against ONNX Runtime; remote: run and time over TVM RPC
"""

from .loader import LoadedModel, load, machine_arch, read_manifest, to_numpy, verify_files

__all__ = ["LoadedModel", "load", "machine_arch", "read_manifest", "to_numpy", "verify_files"]
