"""Errors a user can act on.

Every error tvmdeploy raises on purpose is a TvmDeployError whose message names
what was wrong (file, input, key) and how to fix it. The CLI prints only that
message; tracebacks are for `--debug`.
"""

import errno
import os


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
    """The last line of a (often multi-page) TVM error, with its type: enough to act on.

    A root cause the last line drops (a linker's "No space left on device" above the
    command line it prints last) is appended.
    """
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    summary = f"{type(e).__name__}: {lines[-1].strip() if lines else '(no message; rerun with --debug)'}"
    cause = root_cause(e)
    if cause and cause.split(" (")[0] not in summary:
        summary = f"{summary[: max(0, limit - len(cause) - 15)]} (root cause: {cause})"
    return summary[:limit]


# OS errors whose cause the user must fix (space, permissions, a read-only mount): the
# one-line error names them, whatever layer (a linker, TVM, numpy) hit them first.
_ROOT_CAUSES = {
    errno.ENOSPC: "free space on that file system",
    errno.EDQUOT: "free space within your quota",
    errno.EFBIG: "raise the file-size limit (ulimit -f) or write elsewhere",
    errno.EACCES: "check the permissions or write elsewhere",
    errno.EPERM: "check the permissions or write elsewhere",
    errno.EROFS: "write to a writable file system",
}


def root_cause(e: BaseException) -> str | None:
    """'No space left on device (ENOSPC)' and the like, from the exception, its causes, or
    their text (tools run as subprocesses report errors only as text)."""
    seen, item = set(), e
    while item is not None and id(item) not in seen:
        seen.add(id(item))
        if isinstance(item, OSError) and item.errno in _ROOT_CAUSES:
            return f"{os.strerror(item.errno)} ({errno.errorcode[item.errno]})"
        item = item.__cause__ or item.__context__
    text = str(e)
    for code in _ROOT_CAUSES:
        if os.strerror(code) in text:
            return f"{os.strerror(code)} ({errno.errorcode[code]})"
    return None


def os_error_line(e: OSError) -> str | None:
    """A one-line message for an OS error a user can fix, or None for any other."""
    if e.errno not in _ROOT_CAUSES:
        return None
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{os.strerror(e.errno)} ({errno.errorcode[e.errno]}); {_ROOT_CAUSES[e.errno]}"


class BoardError(TvmDeployError):
    """The emulated board cannot be set up, started or reached."""


class RemoteError(TvmDeployError):
    """A remote device (RPC server or tracker) cannot be reached or fails a run."""


# An interrupt (Ctrl-C, SIGTERM) raised inside a TVM callback comes back out of the FFI as
# an ordinary error, which code that falls back on any error (a kernel schedule that does
# not apply) would swallow, and the compile would go on to write a slower artifact. The
# CLI's signal handler records the request here; the compile checks it before it builds
# and before it writes the artifact.
_interrupt_requested = False


def request_interrupt() -> None:
    global _interrupt_requested
    _interrupt_requested = True


def interrupt_requested() -> bool:
    return _interrupt_requested


def raise_if_interrupted() -> None:
    """KeyboardInterrupt if an interrupt was requested, even one an error handler swallowed."""
    if _interrupt_requested:
        raise KeyboardInterrupt
