"""An emulated aarch64 board on this x86 machine, for cross-compiled artifacts.

provision.py sets it up (host tools, arm64 sysroot, runtime-only TVM wheels); server.py
starts, stops and reports its TVM RPC server and tracker. The public verbs are
re-exported here: `board.setup`, `board.start`, `board.stop`, `board.status`.
"""

from .provision import DEFAULT_PORT, DEFAULT_PRESET, DEFAULT_TRACKER_PORT, Board, locate, missing_host_packages, setup
from .server import Service, qemu_cpu, start, status, stop

__all__ = [
    "DEFAULT_PORT", "DEFAULT_PRESET", "DEFAULT_TRACKER_PORT", "Board", "Service",
    "locate", "missing_host_packages", "qemu_cpu", "setup", "start", "status", "stop",
]
