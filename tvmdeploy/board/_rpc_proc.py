"""Runs TVM's stock RPC server or tracker and writes the port it bound to a state file.

Started by `tvmdeploy.board` as a script (by path, so importing it loads nothing of
tvmdeploy): the server under the emulated aarch64 Python, the tracker under the host's.
TVM silently binds the next free port when the asked one is busy, so the port actually
bound is written to the state file, which the parent waits for.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["server", "tracker"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--port-end", type=int, required=True)
    parser.add_argument("--key", default="")
    parser.add_argument("--tracker", default=None, help="HOST:PORT of a tracker to register with")
    parser.add_argument("--state", required=True, help="JSON file to write {pid, port} to once bound")
    parser.add_argument("--python", default=None, help="what sys.executable must be for TVM's workers")
    args = parser.parse_args(argv)
    if args.python:
        # rpc.Server re-launches `sys.executable -m tvm.exec.popen_worker`; under qemu-user
        # sys.executable is an aarch64 ELF the kernel cannot exec without binfmt_misc, so
        # it must be the wrapper script that re-enters qemu.
        sys.executable = args.python

    from tvm import rpc

    if args.role == "tracker":
        from tvm.rpc.tracker import Tracker

        proc = Tracker(args.host, port=args.port, port_end=args.port_end, silent=True)
    else:
        tracker = None
        if args.tracker:
            host, _, port = args.tracker.rpartition(":")
            tracker = (host, int(port))
        proc = rpc.Server(args.host, args.port, args.port_end, key=args.key, tracker_addr=tracker)
    tmp = args.state + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"pid": os.getpid(), "port": proc.port}, f)
    os.replace(tmp, args.state)
    print(f"{args.role} listening on {args.host}:{proc.port}", flush=True)
    proc.proc.join()


if __name__ == "__main__":
    main()
