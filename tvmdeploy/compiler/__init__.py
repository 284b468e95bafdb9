"""The compile side: model file -> optimized, scheduled, built, packaged artifact.

`pipeline.compile_model` reads top to bottom as the numbered stages; each stage lives
in its own module or package and returns a typed report (`reports.py`):
frontend (import) -> optimize + passes (graph) -> pruning / quantization (shrink)
-> lowering (fused kernels) -> tuning + kernels (schedules) -> build -> artifact (package).
`_tvm` is the one module that names TVM's unstable APIs.
"""

from .pipeline import CompileResult, compile_model, tune_model

__all__ = ["CompileResult", "compile_model", "tune_model"]
