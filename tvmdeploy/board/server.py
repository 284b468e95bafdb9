"""Process supervision for the emulated board: the RPC server and tracker under qemu.

    start    run TVM's stock RPC server inside the emulated Python, on 127.0.0.1, with the
             qemu CPU model of the preset (so code for a wrong mcpu/mattr dies with SIGILL),
             optionally with a local RPC tracker it registers with
    stop     stop them (each runs in its own process group, workers included)
    status   what is set up and running

Provisioning (the sysroot, the wheels, the wrapper) is in provision.py.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import BoardError
from ..fsutil import atomic_write_text
from .provision import DEFAULT_PORT, DEFAULT_PRESET, DEFAULT_TRACKER_PORT, Board, Log, last_line, locate, quiet


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
    from ..compiler.presets import load_preset

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
    log: Log = quiet,
) -> dict[str, Service]:
    """Start the RPC server (and, with local_tracker, a tracker on 127.0.0.1 it registers with).

    tracker: HOST:PORT of an existing tracker to register with. key: the device key
    under a tracker (default: the preset name). Returns the running services by role.
    """
    warning = exposure_warning(host)
    if warning:
        log(warning)
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
        from ..runtime.remote import parse_address

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


def exposure_warning(host: str) -> str | None:
    """A warning for an address other machines can reach: TVM's RPC server loads and runs
    any library a client uploads, with this user's rights, and has no authentication."""
    if host.strip("[]").lower() == "localhost":
        return None
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return None
    except ValueError:
        pass  # a host name: it may resolve to any interface
    return (
        f"warning: the RPC server will listen on {host}, reachable from other machines: it runs ANY "
        f"library anyone who can connect uploads, as this user, without authentication; use 127.0.0.1 "
        f"(the default) with an SSH tunnel, or a firewalled network"
    )


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
            raise BoardError(f"the RPC {role} exited at start ({last_line(board.log_file(role).read_text())}); log: {board.log_file(role)}")
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
    from ..runtime.remote import tracker_summary

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
        if group_alive(service.pid):  # the leader may be dead while its workers still serve
            _kill_group(service.pid, timeout)
            stopped.append(service)
        board.run_file(role).unlink(missing_ok=True)
    return stopped


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is alive. Each service runs in its own session, so
    its pid is its process group's id; TVM's worker (which holds the accepted connection)
    outlives a killed leader, and still serves."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_group(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it when it is our own child
        if not group_alive(pid):
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
        if service is not None and group_alive(service.pid):
            services[role] = service
        elif service is not None:
            board.run_file(role).unlink(missing_ok=True)  # died or killed: forget it
    return {"board": board.root, "ready": board.is_ready(), "facts": board.facts(), "services": services}
