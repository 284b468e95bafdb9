"""tvmdeploy: compile trained models into fast, verified TVM artifacts.

Two sides, two folders:
- `tvmdeploy.runtime`: the deploy side (loader, manifest, weights file, device checks,
  bench, remote runs). It needs TVM's runtime library and numpy, imports nothing from
  the compile side, and maps only libtvm_runtime.so when it is the first to import TVM.
- `tvmdeploy.compiler`: the pipeline (import, graph passes, pruning, quantization,
  lowering, scheduling, build, packaging); the only side that imports TVM's compiler.
- `tvmdeploy.board`: an emulated aarch64 board (qemu-user) for cross-compiled artifacts.

Importing the package is cheap and loads no TVM code: `compile_model` and `load` are
imported on first use.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "compile_model", "load", "TvmDeployError"]


def __getattr__(name):
    # Lazy re-exports: keep `import tvmdeploy` free of TVM imports.
    if name == "compile_model":
        from .compiler import compile_model

        return compile_model
    if name == "load":
        from .runtime import load

        return load
    if name == "TvmDeployError":
        from .errors import TvmDeployError

        return TvmDeployError
    raise AttributeError(f"module 'tvmdeploy' has no attribute {name!r}")
