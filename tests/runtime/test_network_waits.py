"""Bounded network waits: every connect and session ends within its timeout and the process
exits; the board's supervision sees (and stops) its whole process group.

The "servers" that misbehave are real sockets in this process; the CLI runs in a child
process so that a hang shows up as the child's timeout, not as a stuck test run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest

from tvmdeploy import board
from tvmdeploy.board.server import exposure_warning, group_alive
from tvmdeploy.errors import RemoteError
from tvmdeploy.runtime import load
from tvmdeploy.runtime.remote import RemoteDevice, RemoteTimeout, bounded, load_remote

RPC_MAGIC = 0xFF271


class FakeServer:
    """A TCP listener on 127.0.0.1 whose connections are answered by `answer(index, conn)`."""

    def __init__(self, answer):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.answer, self.held = answer, []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        index = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)  # kept open: a silent peer, not a closed one
            self.answer(index, conn)
            index += 1

    def close(self):
        self.sock.close()
        for conn in self.held:
            conn.close()


def _silent(index, conn):
    pass


def _garbage(index, conn):
    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")


def _handshake_then_silent(index, conn):
    """Answers the probe as a TVM RPC server would (key mismatch), then never starts a session."""
    if index == 0:
        conn.recv(64)
        conn.sendall(struct.pack("<i", RPC_MAGIC + 2))


def _cli(*args, timeout=120):
    proc = subprocess.run(
        [sys.executable, "-m", "tvmdeploy.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize(
    "answer, message",
    [
        (_silent, r"something listens there but gave no TVM RPC handshake within 1 s"),
        (_garbage, r"something listens there, but not a TVM RPC server"),
        (_handshake_then_silent, r"rpc 127.0.0.1:\d+: no session within 1 s"),
    ],
)
def test_run_rpc_against_a_wrong_or_silent_server_exits(digits_artifact, answer, message):
    server = FakeServer(answer)
    try:
        code, _, err = _cli("run", digits_artifact, "--rpc", f"127.0.0.1:{server.port}", "--timeout", "1", "--random-inputs")
    finally:
        server.close()
    assert code == 1, err
    assert err.startswith("tvmdeploy: error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err


def test_bounded_call_gives_up_and_leaves_a_daemon_thread():
    never = threading.Event()
    with pytest.raises(RemoteTimeout, match=r"waiting: no answer within 0.2 s"):
        bounded(never.wait, 0.2, "waiting")
    stuck = [t for t in threading.enumerate() if t.name == "tvmdeploy-rpc: waiting"]
    assert stuck and all(t.daemon for t in stuck)  # never joined at interpreter exit
    never.set()
    assert bounded(lambda: 42, 5, "quick") == 42
    with pytest.raises(ZeroDivisionError):
        bounded(lambda: 1 / 0, 5, "failing")


def test_real_rpc_server_still_serves_after_the_probe(digits_artifact, digits):
    """The handshake probe must not take the one session a TVM RPC server serves."""
    from tvm import rpc

    server = rpc.Server("127.0.0.1", port=9300, port_end=9400)
    try:
        with load_remote(digits_artifact, rpc=f"127.0.0.1:{server.port}", timeout_s=60) as model:
            (remote,) = model(digits[0][:1])
        (local,) = load(digits_artifact)(digits[0][:1])
        np.testing.assert_allclose(remote, local, rtol=1e-6, atol=1e-6)
    finally:
        server.terminate()


def test_rpc_nothing_listening_is_one_line():
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(RemoteError, match=rf"--rpc 127.0.0.1:{port}: cannot connect"):
        RemoteDevice(rpc=f"127.0.0.1:{port}", timeout_s=1).connect()


GROUP = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(child.pid, flush=True)
time.sleep(600)
"""


def test_board_status_and_stop_find_the_whole_process_group(tmp_path):
    """The server's leader is killed, its worker (same process group) keeps serving: status
    must still say running, and stop must end the worker too."""
    leader = subprocess.Popen([sys.executable, "-c", GROUP], stdout=subprocess.PIPE, text=True, start_new_session=True)
    worker = int(leader.stdout.readline())
    run = tmp_path / "run"
    run.mkdir()
    (run / "server.json").write_text(json.dumps({"role": "server", "pid": leader.pid, "host": "127.0.0.1", "port": 9090}))
    try:
        os.kill(leader.pid, signal.SIGKILL)
        leader.wait()
        assert group_alive(leader.pid)  # the worker is still there
        assert "server" in board.status(tmp_path)["services"]
        stopped = board.stop(tmp_path, timeout=10)
        assert [s.role for s in stopped] == ["server"]
        assert not group_alive(leader.pid)
        with pytest.raises(ProcessLookupError):
            os.kill(worker, 0)
        assert board.status(tmp_path)["services"] == {}
    finally:
        if group_alive(leader.pid):
            os.killpg(leader.pid, signal.SIGKILL)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "example.org"])
def test_non_loopback_board_address_warns(tmp_path, monkeypatch, host):
    assert "runs ANY library" in exposure_warning(host)
    monkeypatch.setenv("TVMDEPLOY_BOARD_DIR", str(tmp_path))
    code, out, err = _cli("board", "start", "--host", host)
    assert code == 1 and "not set up" in err  # no board here; the warning still came first
    assert f"warning: the RPC server will listen on {host}" in out


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost", "[::1]"])
def test_loopback_board_address_does_not_warn(host):
    assert exposure_warning(host) is None
