"""Provisioning the emulated aarch64 board: qemu-user + an arm64 Debian Python + TVM's runtime.

    setup    install the host tools (apt-get, as root), extract an arm64 bookworm sysroot
             with python3.11, install aarch64 wheels of TVM (runtime library only) and numpy

Starting and stopping its RPC server and tracker is server.py.

Everything lives in <cache root>/board/ (default ~/.cache/tvmdeploy/board; the cache root
follows $TVMDEPLOY_CACHE_DIR; $TVMDEPLOY_BOARD_DIR overrides the board folder alone),
never in the repository. No binfmt_misc and no dpkg multiarch are needed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, Iterator

from ..errors import BoardError
from ..folders import default_board_dir
from ..runtime.loader import machine_arch
from ..fsutil import atomic_write_text

DEBIAN_SUITE = "bookworm"  # its python3.11 matches the cp311 wheels installed for it
PYTHON = "python3.11"
DEFAULT_PORT = 9090
DEFAULT_TRACKER_PORT = 9190
DEFAULT_PRESET = "aarch64-cortex-a72"

# Host command -> the Debian package that provides it.
HOST_TOOLS = {
    "qemu-aarch64": "qemu-user",
    "mmdebstrap": "mmdebstrap",
    "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
    "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu",  # the C++ loader example, cross-compiled
}
# The cross linker needs the arm64 C runtime objects too ("cannot find crti.o" otherwise).
HOST_FILES = {
    "/usr/aarch64-linux-gnu/lib/crti.o": "libc6-dev-arm64-cross",
    # mmdebstrap verifies the arm64 Debian packages with it (absent on Ubuntu hosts).
    "/usr/share/keyrings/debian-archive-keyring.gpg": "debian-archive-keyring",
}
# The emulated Python's packages. psutil and cloudpickle: TVM's RPC server workers need them.
BOARD_WHEELS = ("numpy", "cloudpickle", "psutil")

Log = Callable[[str], None]


def quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class Board:
    """The board folder and what is in it."""

    root: Path

    @property
    def sysroot(self) -> Path:
        return self.root / "sysroot"

    @property
    def site(self) -> Path:
        return self.root / "site"

    @property
    def python(self) -> Path:
        """An x86 script that runs the emulated Python (usable as sys.executable)."""
        return self.root / "bin" / "python"

    @property
    def ready_file(self) -> Path:
        return self.root / "ready.json"

    def run_file(self, role: str) -> Path:
        return self.root / "run" / f"{role}.json"

    def log_file(self, role: str) -> Path:
        return self.root / "run" / f"{role}.log"

    def is_ready(self) -> bool:
        try:
            facts = json.loads(self.ready_file.read_text())
        except (OSError, ValueError):
            return False
        return facts.get("tvm") == _host_version("apache-tvm") and self.python.exists()

    def facts(self) -> dict:
        try:
            return json.loads(self.ready_file.read_text())
        except (OSError, ValueError):
            return {}

    def python_command(self, cpu: str = "cortex-a72", pythonpath: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
        """argv prefix and environment that run a script under the emulated Python.

        pythonpath: extra folders (e.g. a tvmdeploy checkout) after the aarch64 site folder.
        """
        self.require_ready()
        env = dict(os.environ)
        env.update(_board_env(cpu, pythonpath))
        return [str(self.python)], env

    def require_ready(self) -> None:
        if not self.is_ready():
            raise BoardError(f"the emulated board is not set up in {self.root}; run `tvmdeploy board setup` first")


def locate(board_dir: str | os.PathLike | None = None) -> Board:
    if board_dir:
        return Board(Path(board_dir))
    return Board(default_board_dir())


def _board_env(cpu: str, pythonpath: list[str] | None) -> dict[str, str]:
    # The host's PYTHONPATH (x86 packages) must not leak into the emulated Python, so the
    # wrapper builds PYTHONPATH from the site folder and TVMDEPLOY_BOARD_PYTHONPATH.
    return {
        "TVMDEPLOY_BOARD_CPU": cpu,
        "TVMDEPLOY_BOARD_PYTHONPATH": os.pathsep.join(str(p) for p in pythonpath or []),
        "TVM_USE_RUNTIME_LIB": "1",
    }


# ---------------------------------------------------------------------------------- setup


def setup(board_dir: str | os.PathLike | None = None, log: Log = quiet, install_packages: bool = True) -> Board:
    """Prepare the emulated board (idempotent: a ready board is left as it is)."""
    _require_supported_host()
    board = locate(board_dir)
    board.root.mkdir(parents=True, exist_ok=True)
    with _locked(board.root / "setup.lock"):
        if board.is_ready():
            log(f"board already set up in {board.root}")
            return board
        started = time.monotonic()
        timings = {}
        ensure_host_packages(log, install=install_packages)
        timings["host_packages_s"] = round(time.monotonic() - started, 1)
        t = time.monotonic()
        _make_sysroot(board, log)
        timings["sysroot_s"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        _install_wheels(board, log)
        timings["wheels_s"] = round(time.monotonic() - t, 1)
        _write_wrapper(board)
        t = time.monotonic()
        _smoke_test(board, log)
        timings["smoke_test_s"] = round(time.monotonic() - t, 1)
        timings["total_s"] = round(time.monotonic() - started, 1)
        facts = {
            "tvm": _host_version("apache-tvm"),
            "tvm-ffi": _host_version("apache-tvm-ffi"),
            "suite": DEBIAN_SUITE,
            "python": PYTHON,
            "size_mb": round(_folder_size(board.root) / 1e6),
            "timings": timings,
        }
        atomic_write_text(board.ready_file, json.dumps(facts, indent=1) + "\n")
        log(f"board set up in {board.root} in {timings['total_s']:.0f} s ({facts['size_mb']} MB)")
        return board


def _require_supported_host() -> None:
    if platform.system() != "Linux" or machine_arch() != "x86_64":
        raise BoardError(
            f"the emulated board needs an x86_64 Linux host with qemu-user (this is "
            f"{platform.system()} {platform.machine()}); on an aarch64 machine run artifacts directly"
        )


def missing_host_packages() -> list[str]:
    missing = [pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None]
    missing += [pkg for path, pkg in HOST_FILES.items() if not Path(path).exists()]
    return sorted(set(missing))


def ensure_host_packages(log: Log = quiet, install: bool = True) -> None:
    """Install the missing Debian packages with apt-get when root; otherwise say which."""
    missing = missing_host_packages()
    if not missing:
        return
    command = f"apt-get install -y {' '.join(missing)}"
    if not install or os.geteuid() != 0 or shutil.which("apt-get") is None:
        why = "not root" if os.geteuid() != 0 else "no apt-get on this machine"
        raise BoardError(
            f"the emulated board needs the Debian packages {', '.join(missing)} ({why}); "
            f"install them: sudo {command}"
        )
    log(f"installing {' '.join(missing)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Another apt run on the machine holds the dpkg lock for a while: wait for it.
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "-q"]
    update = subprocess.run([*apt, "update"], env=env, capture_output=True, text=True)
    result = subprocess.run(
        [*apt, "install", "-y", "--no-install-recommends", *missing], env=env, capture_output=True, text=True
    )
    if result.returncode != 0 or missing_host_packages():
        tail = last_line(result.stderr or update.stderr or result.stdout)
        raise BoardError(f"`{command}` failed: {tail}")


def _debian_mirror() -> str:
    """The Debian archive this machine's apt uses (a local mirror or snapshot works offline-ish)."""
    candidates = []
    sources = Path("/etc/apt/sources.list.d")
    for file in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        for line in file.read_text(errors="replace").splitlines():
            if line.startswith("URIs:"):
                candidates += line.split()[1:]
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        for line in legacy.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb":
                candidates.append(next(p for p in parts[1:] if not p.startswith("[")))
    for uri in candidates:
        if "security" not in uri and "debian" in uri:
            return uri
    return "http://deb.debian.org/debian"


def _make_sysroot(board: Board, log: Log) -> None:
    # variant=extract only unpacks the packages: no arm64 code runs, no binfmt needed.
    tmp = board.root / "sysroot.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    mirror = _debian_mirror()
    log(f"extracting an arm64 {DEBIAN_SUITE} sysroot with {PYTHON} from {mirror}")
    command = [
        "mmdebstrap", "--arch=arm64", "--variant=extract", "--quiet",
        f"--include={PYTHON},libstdc++6,libgcc-s1", DEBIAN_SUITE, str(tmp), mirror,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BoardError(f"mmdebstrap (arm64 {DEBIAN_SUITE} from {mirror}) failed: {last_line(result.stderr)}")
    shutil.rmtree(board.sysroot, ignore_errors=True)
    tmp.rename(board.sysroot)


def _install_wheels(board: Board, log: Log) -> None:
    tvm_version, ffi_version = _host_version("apache-tvm"), _host_version("apache-tvm-ffi")
    if tvm_version is None or ffi_version is None:
        raise BoardError("apache-tvm is not installed on this host; install tvmdeploy first (pip install -e .)")
    tmp = board.root / "site.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    packages = [f"apache-tvm=={tvm_version}", f"apache-tvm-ffi=={ffi_version}", *BOARD_WHEELS]
    log(f"downloading aarch64 wheels: {' '.join(packages)}")
    # manylinux_2_28 must be listed: pip does not widen manylinux_2_X tags for --platform.
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--target", str(tmp), "--only-binary=:all:",
        "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux2014_aarch64",
        "--python-version", "3.11", "--implementation", "cp",
        "--abi", "cp311", "--abi", "abi3", "--abi", "none", *packages,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BoardError(f"pip could not fetch the aarch64 wheels ({' '.join(packages)}): {last_line(result.stderr)}")
    # A board runs artifacts, it does not compile: the 228 MB compiler library goes.
    for lib in (tmp / "tvm" / "lib").glob("libtvm_compiler*"):
        lib.unlink()
    shutil.rmtree(board.site, ignore_errors=True)
    tmp.rename(board.site)


def _write_wrapper(board: Board) -> None:
    board.python.parent.mkdir(parents=True, exist_ok=True)
    sysroot, site = board.sysroot, board.site
    script = f"""#!/bin/sh
# The emulated aarch64 Python of tvmdeploy's board (written by `tvmdeploy board setup`).
# TVM's RPC server re-launches sys.executable for its workers; without binfmt_misc the
# kernel cannot exec an aarch64 ELF, so sys.executable is this script, re-entering qemu.
PYTHONPATH="{site}${{TVMDEPLOY_BOARD_PYTHONPATH:+:$TVMDEPLOY_BOARD_PYTHONPATH}}"
TVM_USE_RUNTIME_LIB=1
export PYTHONPATH TVM_USE_RUNTIME_LIB
unset PYTHONHOME
exec qemu-aarch64 -cpu "${{TVMDEPLOY_BOARD_CPU:-cortex-a72}}" -L "{sysroot}" "{sysroot}/usr/bin/{PYTHON}" "$@"
"""
    atomic_write_text(board.python, script)
    board.python.chmod(0o755)


def _smoke_test(board: Board, log: Log) -> None:
    log("checking the emulated Python imports TVM's runtime")
    code = (
        "import platform, numpy, tvm, tvm.runtime.vm, tvm.rpc;"
        "print(platform.machine(), tvm.__version__, numpy.__version__)"
    )
    env = dict(os.environ, **_board_env("cortex-a72", None))
    result = subprocess.run([str(board.python), "-c", code], capture_output=True, text=True, env=env, timeout=300)
    if result.returncode != 0 or not result.stdout.startswith("aarch64"):
        raise BoardError(f"the emulated Python does not work: {last_line(result.stderr or result.stdout)}")


# ------------------------------------------------------------------------ start / stop


# ------------------------------------------------------------------------------- helpers


def _host_version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"
