"""An emulated aarch64 board on this x86 machine: qemu-user + an arm64 Debian Python + TVM's runtime.

    setup    install the host tools (apt-get, as root), extract an arm64 bookworm sysroot
             with python3.11, install aarch64 wheels of TVM (runtime library only) and numpy
    start    run TVM's stock RPC server inside the emulated Python, on 127.0.0.1, with the
             qemu CPU model of the preset (so code for a wrong mcpu/mattr dies with SIGILL),
             optionally with a local RPC tracker it registers with
    stop     stop them (each runs in its own process group, workers included)
    status   what is set up and running

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
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, Iterator

from .errors import BoardError
from .fsutil import atomic_write_text, process_alive

BOARD_DIR_ENV = "TVMDEPLOY_BOARD_DIR"
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


def _quiet(_: str) -> None:
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
    if os.environ.get(BOARD_DIR_ENV):
        return Board(Path(os.environ[BOARD_DIR_ENV]))
    from .tuning.cache import default_cache_root

    return Board(default_cache_root() / "board")


def _board_env(cpu: str, pythonpath: list[str] | None) -> dict[str, str]:
    # The host's PYTHONPATH (x86 packages) must not leak into the emulated Python, so the
    # wrapper builds PYTHONPATH from the site folder and TVMDEPLOY_BOARD_PYTHONPATH.
    return {
        "TVMDEPLOY_BOARD_CPU": cpu,
        "TVMDEPLOY_BOARD_PYTHONPATH": os.pathsep.join(str(p) for p in pythonpath or []),
        "TVM_USE_RUNTIME_LIB": "1",
    }


# ---------------------------------------------------------------------------------- setup


def setup(board_dir: str | os.PathLike | None = None, log: Log = _quiet, install_packages: bool = True) -> Board:
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
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        raise BoardError(
            f"the emulated board needs an x86_64 Linux host with qemu-user (this is "
            f"{platform.system()} {platform.machine()}); on an aarch64 machine run artifacts directly"
        )


def missing_host_packages() -> list[str]:
    missing = [pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None]
    missing += [pkg for path, pkg in HOST_FILES.items() if not Path(path).exists()]
    return sorted(set(missing))


def ensure_host_packages(log: Log = _quiet, install: bool = True) -> None:
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
        tail = _last_line(result.stderr or update.stderr or result.stdout)
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
        raise BoardError(f"mmdebstrap (arm64 {DEBIAN_SUITE} from {mirror}) failed: {_last_line(result.stderr)}")
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
        raise BoardError(f"pip could not fetch the aarch64 wheels ({' '.join(packages)}): {_last_line(result.stderr)}")
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
        raise BoardError(f"the emulated Python does not work: {_last_line(result.stderr or result.stdout)}")


# ------------------------------------------------------------------------ start / stop


@dataclass(frozen=True)
class Service:
    role: str  # "server" or "tracker"
    pid: int
    host: str
    port: int
    key: str = ""
    cpu: str = ""
    preset: str = ""
    tracker: str = ""  # the tracker a server registered with

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def qemu_cpu(preset_name: str) -> str:
    """The qemu CPU model for a preset: its mcpu, so qemu enforces the preset's instruction set."""
    from .presets import load_preset

    preset = load_preset(preset_name)
    if preset.arch != "aarch64":
        raise BoardError(f"preset {preset.name} is for {preset.arch}, the emulated board is aarch64; use an aarch64-* preset")
    cpu = str(preset.cpu_target.get("mcpu", "max"))
    known = _qemu_cpus()
    if known and cpu not in known:
        raise BoardError(
            f"qemu-aarch64 on this machine cannot emulate {cpu} (preset {preset.name}); "
            f"it knows: {', '.join(sorted(known))}"
        )
    return cpu


def _qemu_cpus() -> set[str]:
    try:
        out = subprocess.run(["qemu-aarch64", "-cpu", "help"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return {line.split()[0] for line in out.splitlines() if line.startswith(" ") and line.split()}


def start(
    preset: str = DEFAULT_PRESET,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    tracker: str | None = None,
    local_tracker: bool = False,
    key: str | None = None,
    board_dir: str | os.PathLike | None = None,
    timeout: float = 180,
    log: Log = _quiet,
) -> dict[str, Service]:
    """Start the RPC server (and, with local_tracker, a tracker on 127.0.0.1 it registers with).

    tracker: HOST:PORT of an existing tracker to register with. key: the device key
    under a tracker (default: the preset name). Returns the running services by role.
    """
    board = locate(board_dir)
    board.require_ready()
    cpu = qemu_cpu(preset)
    running = status(board_dir)["services"]
    if running:
        names = ", ".join(f"{s.role} on {s.address}" for s in running.values())
        raise BoardError(f"the board is already running ({names}); stop it first: tvmdeploy board stop")
    if tracker and local_tracker:
        raise BoardError("give either an existing tracker (--tracker HOST:PORT) or --local-tracker, not both")
    if tracker:
        from .remote import parse_address

        parse_address(tracker, "--tracker")
    key = key or (preset if (tracker or local_tracker) else "")
    board.run_file("server").parent.mkdir(parents=True, exist_ok=True)
    services = {}
    try:
        if local_tracker:
            log("starting the RPC tracker on 127.0.0.1")
            services["tracker"] = _spawn(
                board, "tracker", [sys.executable], dict(os.environ, TVM_USE_RUNTIME_LIB="1"),
                ["--host", "127.0.0.1", "--port", str(DEFAULT_TRACKER_PORT), "--port-end", str(DEFAULT_TRACKER_PORT + 10)],
                timeout, {},
            )
            tracker = services["tracker"].address
        log(f"starting TVM's RPC server under qemu-aarch64 -cpu {cpu} on {host} (takes ~15 s)")
        argv, env = board.python_command(cpu)
        extra = ["--host", host, "--port", str(port), "--port-end", str(port + 100), "--python", str(board.python)]
        if key:
            extra += ["--key", key]
        if tracker:
            extra += ["--tracker", tracker]
        services["server"] = _spawn(
            board, "server", argv, env, extra, timeout,
            {"key": key, "cpu": cpu, "preset": preset, "tracker": tracker or ""},
        )
        if tracker:
            _wait_registered(tracker, key, timeout)
    except BaseException:
        stop(board_dir)
        raise
    return services


def _spawn(board: Board, role: str, argv: list[str], env: dict, extra: list[str], timeout: float, facts: dict) -> Service:
    state = board.run_file(role)
    state.unlink(missing_ok=True)
    bound = state.with_suffix(".bound")
    bound.unlink(missing_ok=True)
    script = Path(__file__).with_name("_rpc_proc.py")
    host = extra[extra.index("--host") + 1]
    with open(board.log_file(role), "w") as logf:
        # Own session: stop() kills the whole process group, TVM's worker processes included.
        proc = subprocess.Popen(
            [*argv, str(script), role, *extra, "--state", str(bound)],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while not bound.exists():
        if proc.poll() is not None:
            raise BoardError(f"the RPC {role} exited at start ({_last_line(board.log_file(role).read_text())}); log: {board.log_file(role)}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise BoardError(f"the RPC {role} did not start within {timeout:.0f} s; log: {board.log_file(role)}")
        time.sleep(0.2)
    port = int(json.loads(bound.read_text())["port"])
    bound.unlink()
    service = Service(role=role, pid=proc.pid, host=host, port=port, **facts)
    atomic_write_text(state, json.dumps(service.__dict__) + "\n")
    return service


def _wait_registered(tracker: str, key: str, timeout: float) -> None:
    """A server registers with its tracker a moment after binding: wait until it is listed."""
    from .remote import tracker_summary

    deadline = time.monotonic() + timeout
    while not tracker_summary(tracker).get(key):
        if time.monotonic() > deadline:
            raise BoardError(f"the RPC server did not register with the tracker {tracker} as '{key}' within {timeout:.0f} s")
        time.sleep(0.5)


def stop(board_dir: str | os.PathLike | None = None, timeout: float = 15) -> list[Service]:
    """Stop the server and tracker (whole process groups); returns what was stopped."""
    board = locate(board_dir)
    stopped = []
    for role in ("server", "tracker"):
        service = _read_service(board, role)
        if service is None:
            continue
        if process_alive(service.pid):
            _kill_group(service.pid, timeout)
            stopped.append(service)
        board.run_file(role).unlink(missing_ok=True)
    return stopped


def _kill_group(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it when it is our own child
        if not process_alive(pid):
            break
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # also the group's stragglers


def _read_service(board: Board, role: str) -> Service | None:
    try:
        return Service(**json.loads(board.run_file(role).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def status(board_dir: str | os.PathLike | None = None) -> dict:
    """{"board": path, "ready": bool, "facts": setup facts, "services": {role: Service}} (live only)."""
    board = locate(board_dir)
    services = {}
    for role in ("server", "tracker"):
        service = _read_service(board, role)
        if service is not None and process_alive(service.pid):
            services[role] = service
        elif service is not None:
            board.run_file(role).unlink(missing_ok=True)  # died or killed: forget it
    return {"board": board.root, "ready": board.is_ready(), "facts": board.facts(), "services": services}


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


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"
