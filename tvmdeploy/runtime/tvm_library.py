"""Which TVM library the deploy side maps: the 3 MB runtime, not the 248 MB compiler.

TVM decides at `import tvm` (from TVM_USE_RUNTIME_LIB) whether to map libtvm_compiler.so,
so the choice is made here, once, the first time the deploy side needs TVM. The variable
is set only around that import: child processes (MetaSchedule workers of a later compile
in the same program, a board's RPC server) keep the environment the user gave them.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

_log = logging.getLogger("tvmdeploy.runtime")
_ENV = "TVM_USE_RUNTIME_LIB"
_said = False


def import_tvm():
    """`import tvm` for the loader: runtime-only when TVM is not imported yet in this process."""
    global _said
    if "tvm" not in sys.modules and _ENV not in os.environ:
        os.environ[_ENV] = "1"
        try:
            import tvm
        finally:
            del os.environ[_ENV]
    elif not _said and compiler_mapped():
        _said = True
        _log.info("tvmdeploy.runtime: TVM is already imported with its compiler library in this process; running on it")
    import tvm
    import tvm.runtime.vm  # noqa: F401  (registers the VM on the runtime-only path)

    return tvm


def mapped_tvm_libraries() -> list[str]:
    """Which of TVM's libraries this process has mapped, read from /proc/self/maps
    (libtvm_runtime, libtvm_compiler); from TVM's own flag where /proc is absent."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        base = sys.modules.get("tvm.base")
        if base is None:
            return []
        return ["libtvm_runtime"] + ([] if getattr(base, "_RUNTIME_ONLY", True) else ["libtvm_compiler"])
    return [name for name in ("libtvm_runtime", "libtvm_compiler") if name in maps]


def compiler_mapped() -> bool:
    """Whether this process has TVM's compiler library loaded (False before `import tvm`)."""
    base = sys.modules.get("tvm.base")
    return base is not None and not getattr(base, "_RUNTIME_ONLY", True)
