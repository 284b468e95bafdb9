"""tvmdeploy: compile trained models into fast, verified TVM artifacts.

Importing the package is cheap and loads no TVM code: the compiler side
(`tvmdeploy.compiler`) and the thin loader (`tvmdeploy.runtime`) are imported on
first use, so a deployment process that only runs artifacts never maps TVM's
compiler library.
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
