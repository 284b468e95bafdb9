"""Run and time an artifact on a remote device through TVM's RPC (a server, or a tracker + key).

Like the thin loader, this needs only TVM's runtime library on both sides: the artifact's
files are verified against its manifest here, the library is uploaded, loaded and run by
the device's own runtime, and the outputs come back as numpy arrays. `tvm.rpc` is a
stable API; this is the one module of tvmdeploy that talks to it as a client.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .bench import Timing
from ..errors import ArtifactError, RemoteError, summarize_exception
from .artifact_files import ArtifactFolder
from .manifest import Manifest
from .artifact_manifest import read_manifest, verify_files
from .loader import LoadedModel, to_numpy
from .tvm_library import import_tvm

__all__ = ["RemoteDevice", "RemoteBench", "RemoteTimeout", "bounded", "RemoteModel", "bench_remote", "load_remote", "parse_address", "tracker_summary", "wait_for_device"]

CONNECT_TIMEOUT_S = 10
# TVM's RPC server serves one session at a time; a second client waits in the handshake
# until the first one disconnects. Past this, say so instead of hanging.
SESSION_START_TIMEOUT_S = 120
# Upload + load, and each run or timing on the device (an emulated board is slow).
OPERATION_TIMEOUT_S = 600


class RemoteTimeout(RemoteError):
    """A network wait ran out; a thread may still be blocked in TVM's RPC, so the CLI exits
    the process at once instead of waiting for it at interpreter exit."""


def bounded(call, timeout: float, what: str):
    """call() in a daemon thread, at most `timeout` seconds: TVM's RPC calls block in C with
    no timeout of their own. The thread is a daemon so that, if it never returns, it does
    not keep the process alive (a ThreadPoolExecutor's worker is joined at exit)."""
    result: dict = {}

    def run():
        try:
            result["value"] = call()
        except BaseException as e:  # handed to the caller's thread
            result["error"] = e

    thread = threading.Thread(target=run, name=f"tvmdeploy-rpc: {what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise RemoteTimeout(f"{what}: no answer within {timeout:g} s")
    if "error" in result:
        raise result["error"]
    return result["value"]


def parse_address(text: str, flag: str = "--rpc") -> tuple[str, int]:
    """'HOST:PORT' -> (host, port), or a one-line error naming the flag."""
    host, sep, port = (text or "").strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RemoteError(f"{flag} '{text}' must look like HOST:PORT (e.g. 127.0.0.1:9090)")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class RemoteDevice:
    """Where to run: an RPC server (rpc='HOST:PORT'), or a tracker (tracker='HOST:PORT') and a key."""

    rpc: str | None = None
    tracker: str | None = None
    key: str | None = None
    session_timeout_s: float = 0  # 0: the session lives until closed
    timeout_s: float = SESSION_START_TIMEOUT_S  # for the handshake and the session to start

    def __post_init__(self):
        if bool(self.rpc) == bool(self.tracker):
            raise RemoteError("give exactly one of --rpc HOST:PORT or --tracker HOST:PORT")
        if self.tracker and not self.key:
            raise RemoteError("--tracker needs --key, the device key servers registered with (see `tvmdeploy board status`)")
        parse_address(self.rpc or self.tracker, "--rpc" if self.rpc else "--tracker")

    def describe(self) -> str:
        return f"rpc {self.rpc}" if self.rpc else f"tracker {self.tracker} key {self.key}"

    def connect(self):
        """An RPC session, or a one-line RemoteError (nothing listening, wrong key, no free device)."""
        import_tvm()
        from tvm import rpc

        address = self.rpc or self.tracker
        host, port = parse_address(address, "--rpc" if self.rpc else "--tracker")
        _check_reachable(host, port, "--rpc" if self.rpc else "--tracker", self.timeout_s)

        def open_session():
            if self.rpc:
                return rpc.connect(host, port, key=self.key or "", session_timeout=self.session_timeout_s)
            return rpc.connect_tracker(host, port).request(
                self.key, session_timeout=self.session_timeout_s, max_retry=2
            )

        try:
            return bounded(open_session, self.timeout_s, f"{self.describe()}")
        except RemoteTimeout:
            raise RemoteTimeout(
                f"{self.describe()}: no session within {self.timeout_s:g} s; the device serves one "
                f"session at a time, is another client using it?"
            ) from None
        except Exception as e:
            hint = (
                "is it a TVM RPC server, and does its key match?"
                if self.rpc
                else f"is a server registered as '{self.key}' (see the tracker's summary)?"
            )
            raise RemoteError(f"cannot open an RPC session via {self.describe()}: {summarize_exception(e)}; {hint}") from None


# A client key no server expects: the server answers the handshake with "mismatch" and
# closes, so the probe proves a TVM RPC server listens without taking its one session.
_PROBE_KEY = b"client:tvmdeploy-probe-not-a-session"


def _check_reachable(host: str, port: int, flag: str, timeout: float = SESSION_START_TIMEOUT_S) -> None:
    # TVM's connect retries for minutes and then raises a multi-line error, or waits
    # forever on something that is not TVM RPC; a plain socket says at once (and in one
    # line) that nothing listens there, and the handshake that something else does.
    import_tvm()
    from tvm.rpc import base

    role = "server" if flag == "--rpc" else "tracker"
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S) as sock:
            sock.settimeout(timeout)
            if flag == "--tracker":
                sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
                expected = {base.RPC_TRACKER_MAGIC}
            else:
                sock.sendall(struct.pack("<ii", base.RPC_MAGIC, len(_PROBE_KEY)) + _PROBE_KEY)
                expected = {base.RPC_CODE_SUCCESS, base.RPC_CODE_MISMATCH, base.RPC_CODE_DUPLICATE}
            reply = _recv_exactly(sock, 4)
    except socket.timeout:
        raise RemoteTimeout(
            f"{flag} {host}:{port}: something listens there but gave no TVM RPC handshake within {timeout:g} s "
            f"(not a TVM RPC {role}, or one busy with another client)"
        ) from None
    except OSError as e:
        raise RemoteError(
            f"{flag} {host}:{port}: cannot connect ({e.strerror or e}); is the RPC "
            f"{role} running (e.g. `tvmdeploy board start`)?"
        ) from None
    if len(reply) != 4 or struct.unpack("<i", reply)[0] not in expected:
        raise RemoteError(f"{flag} {host}:{port}: something listens there, but not a TVM RPC {role}")


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def tracker_summary(tracker: str) -> dict[str, int]:
    """{device key: free servers} as a tracker reports them."""
    import_tvm()
    from tvm import rpc

    host, port = parse_address(tracker, "--tracker")
    _check_reachable(host, port, "--tracker")
    try:
        summary = bounded(lambda: rpc.connect_tracker(host, port).summary(), SESSION_START_TIMEOUT_S, f"--tracker {tracker}")
    except RemoteTimeout:
        raise
    except Exception as e:
        raise RemoteError(f"--tracker {tracker}: not a TVM RPC tracker? {summarize_exception(e)}") from None
    return {key: int(info.get("free", 0)) for key, info in summary.get("queue_info", {}).items()}


def wait_for_device(tracker: str, key: str, timeout: float = 60) -> int:
    """Wait until the tracker lists a free server under `key`; returns how many are free.

    A server re-registers a moment after each session ends, so "0 free" is often brief.
    A key the tracker has never heard of fails at once.
    """
    started = time.monotonic()
    deadline = started + timeout
    while True:
        free = tracker_summary(tracker)
        if free.get(key):
            return free[key]
        if key not in free and time.monotonic() > started + 5:  # a few seconds' grace to register
            known = ", ".join(f"{k} ({n} free)" for k, n in sorted(free.items())) or "none"
            raise RemoteError(f"the tracker {tracker} has no device with key '{key}' (keys: {known})")
        if time.monotonic() > deadline:
            raise RemoteError(f"the tracker {tracker}: every '{key}' device stayed busy for {timeout:.0f} s")
        time.sleep(0.5)


class RemoteModel:
    """An artifact loaded on a remote device: the thin loader's calling convention, run over RPC."""

    def __init__(self, folder: Path, manifest: Manifest, device: RemoteDevice, threads: int | None = None, library: bytes | None = None):
        tvm = import_tvm()

        self.path, self.manifest, self.device = folder, manifest, device
        self.inputs, self.outputs = list(manifest.inputs), list(manifest.outputs)
        if manifest.device != "cpu":
            raise ArtifactError(f"{folder}: remote runs support CPU artifacts; this one is for {manifest.device}")
        if library is None:  # the bytes that were hashed, never the file re-read by path
            with ArtifactFolder(folder) as files:
                library = files.read_verified(manifest.library, manifest.files[manifest.library])
        self.session = device.connect()
        self._dev = self.session.cpu()
        try:
            bounded(lambda: self._load(tvm, library, threads), OPERATION_TIMEOUT_S, f"loading on {device.describe()}")
        except RemoteTimeout:
            raise
        except Exception as e:
            raise RemoteError(
                f"{folder}: the device ({device.describe()}) could not load the artifact built for "
                f"{manifest.arch} ({manifest.preset}): {summarize_exception(e, 300)}; is the artifact compiled "
                f"for the device's preset (e.g. --target aarch64-cortex-a72)?"
            ) from None
        self._tvm = tvm

    def _load(self, tvm, library: bytes, threads: int | None) -> None:
        nthreads = self.manifest.threads if threads is None else threads
        if nthreads:
            config = self.session.get_function("runtime.config_threadpool")
            config(0, int(nthreads))
        self.session.upload(bytearray(library), target=self.manifest.library)
        module = self.session.load_module(self.manifest.library)
        self._vm = tvm.runtime.vm.VirtualMachine(module, self._dev)
        self._main = self._vm["main"]

    def close(self) -> None:
        """End the RPC session: the device serves one session at a time."""
        self._main = self._vm = self._dev = self.session = None

    def __enter__(self) -> "RemoteModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<tvmdeploy remote model {self.manifest.model_name} ({self.manifest.preset}) on {self.device.describe()}>"

    # Same input binding and random inputs as the local loader: one convention for both.
    _bind_inputs = LoadedModel._bind_inputs
    random_inputs = LoadedModel.random_inputs

    def __call__(self, *args: Any, **kwargs: Any) -> list[np.ndarray]:
        arrays = self._bind_inputs(args, kwargs)
        try:
            return bounded(lambda: to_numpy(self._main(*self._upload_inputs(arrays))), OPERATION_TIMEOUT_S, f"running on {self.device.describe()}")
        except RemoteTimeout:
            raise
        except Exception as e:
            raise RemoteError(f"the remote run failed ({self.device.describe()}): {summarize_exception(e)}") from None

    def _upload_inputs(self, arrays: Sequence[np.ndarray]) -> list:
        return [self._tvm.runtime.tensor(a, self._dev) for a in arrays]

    def time(self, inputs: Sequence[np.ndarray], warmup: int = 3, repeat: int = 20) -> list[float]:
        """Seconds per run measured on the device itself (no network time), `repeat` samples."""
        arrays = self._bind_inputs(inputs, {})
        try:
            return bounded(lambda: self._time(arrays, warmup, repeat), OPERATION_TIMEOUT_S, f"timing on {self.device.describe()}")
        except RemoteTimeout:
            raise
        except Exception as e:
            raise RemoteError(f"timing on the device failed ({self.device.describe()}): {summarize_exception(e)}") from None


    def _time(self, arrays, warmup: int, repeat: int) -> list[float]:
        tensors = self._upload_inputs(arrays)
        for _ in range(warmup):
            self._main(*tensors)
        # A saved closure: the timed calls do no argument passing over the network.
        self._vm.save_function("main", "main_timed", *tensors)
        timer = self._vm.time_evaluator("main_timed", self._dev, number=1, repeat=repeat)
        return [float(s) for s in timer().results]


def load_remote(
    path: str | os.PathLike,
    rpc: str | None = None,
    tracker: str | None = None,
    key: str | None = None,
    threads: int | None = None,
    timeout_s: float = SESSION_START_TIMEOUT_S,
) -> RemoteModel:
    """Verify an artifact here, then upload and load it on a remote device.

    rpc: 'HOST:PORT' of a TVM RPC server; or tracker: 'HOST:PORT' with key: the device
    key. threads: runtime threads on the device (default: the manifest's).
    """
    device = RemoteDevice(rpc=rpc, tracker=tracker, key=key, timeout_s=timeout_s)
    folder = Path(path)
    manifest = read_manifest(folder)
    verify_files(folder, manifest)
    if manifest.library.endswith(".tar"):
        raise ArtifactError(f"{folder}: a .tar library must be linked on the device; compile with export_format 'so'")
    with ArtifactFolder(folder) as files:
        library = files.read_verified(manifest.library, manifest.files[manifest.library])
    return RemoteModel(folder, manifest, device, threads, library)


@dataclass(frozen=True)
class RemoteBench:
    """Latency measured on the device by TVM's time evaluator (network time excluded)."""

    artifact: Path
    model_name: str
    preset: str
    device: str
    threads: int
    seconds: tuple[float, ...]

    @property
    def timing(self) -> Timing:
        return Timing(self.device, self.seconds)

    def table(self) -> str:
        threads = f"{self.threads} thread(s)" if self.threads else "the device's default threads"
        timing = self.timing
        return (
            f"{self.model_name} ({self.preset}) on {self.device}, {threads}, {len(self.seconds)} runs after warm-up, "
            f"timed on the device\n  median {timing.median_ms:.3f} ms   p90 {timing.p90_ms:.3f} ms"
        )


def bench_remote(
    path: str | os.PathLike, device: RemoteDevice, threads: int | None = None, warmup: int = 3, repeat: int = 30
) -> RemoteBench:
    """Time an artifact on a remote device (no peer: ONNX Runtime would run here, not there)."""
    with load_remote(path, rpc=device.rpc, tracker=device.tracker, key=device.key, threads=threads, timeout_s=device.timeout_s) as model:
        seconds = model.time(model.random_inputs(), warmup=warmup, repeat=repeat)
        manifest = model.manifest
    return RemoteBench(
        Path(path), manifest.model_name, manifest.preset, device.describe(),
        manifest.threads if threads is None else threads, tuple(seconds),
    )
