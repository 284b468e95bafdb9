"""The compile side: model file -> optimized, scheduled, built, packaged artifact.

`pipeline.compile_model` reads top to bottom as the numbered stages; each stage lives
in its own module or package and returns a typed report (`reports.py`):
frontend (import) -> optimize + passes (graph) -> pruning / quantization (shrink)
-> lowering (fused kernels) -> tuning + kernels (schedules) -> build -> artifact (package).
`_tvm` is the one module that names TVM's unstable APIs.

Importing this package loads no TVM: the configs (`pruning.config`,
`quantization.config`) stay cheap for the command line; `compile_model` and
`tune_model` import the pipeline on first use.
"""

__all__ = ["CompileResult", "compile_model", "tune_model"]


def __getattr__(name):
    if name in __all__:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'tvmdeploy.compiler' has no attribute {name!r}")
