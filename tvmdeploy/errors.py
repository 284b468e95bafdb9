"""Errors a user can act on.

Every error tvmdeploy raises on purpose is a TvmDeployError whose message names
what was wrong (file, input, key) and how to fix it. The CLI prints only that
message; tracebacks are for `--debug`.
"""


class TvmDeployError(Exception):
    """Base class: a one-line, actionable message for the user."""


class ModelImportError(TvmDeployError):
    """The model file cannot be read or converted (missing, not ONNX, unsupported op)."""


class PresetError(TvmDeployError):
    """A target preset is unknown or malformed."""


class BuildError(TvmDeployError):
    """TVM failed to optimize, compile or export the model."""


class ArtifactError(TvmDeployError):
    """An artifact is missing, tampered with, or not runnable on this machine."""


class DeviceUnavailableError(ArtifactError):
    """The device an artifact (or tuning) needs is absent: no GPU, no driver, too old a GPU."""


class InputMismatchError(TvmDeployError):
    """Inputs given at run time do not match what the artifact was compiled for."""


def summarize_exception(e: BaseException, limit: int = 500) -> str:
    """The last line of a (often multi-page) TVM error, with its type: enough to act on."""
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[-1].strip() if lines else '(no message; rerun with --debug)'}"[:limit]


class BoardError(TvmDeployError):
    """The emulated board cannot be set up, started or reached."""


class RemoteError(TvmDeployError):
    """A remote device (RPC server or tracker) cannot be reached or fails a run."""
