"""The tuning cache: one MetaSchedule database per resolved target and TVM version.

MetaSchedule's JSON database ignores the target when queried, so sharing one across
targets would hand an AVX-512 schedule to a Cortex-A72. The folder name therefore
names everything a record depends on:

    <cache root>/tuning/v<CACHE_LAYOUT_VERSION>/tvm-<version>/<kind>-<cpu>-<sha256 of the target JSON>/
        target.json                   the resolved target, for humans and `tuning export`
        database_workload.json        \\ the shared database: only replaced whole,
        database_tuning_record.json   / under the lock
        ledger.json                   per kernel: tuning "started" or "done", its budget, and
                                      the patience it converged under (if it did)
        lock                          fcntl lock file
        sessions/<pid>-<rand>/        one private database per running tuning process

A tuning process tunes into its own session database (seeded with the shared
records) and merges new records into the shared files under the lock after every
measured batch. A killed process leaves its session behind; the next one merges it.

The ledger tells a kernel whose tuning finished (skip it: zero new trials) from one
whose run was killed (continue it), and one that converged under less patience than a
run now asks (continue it too). Kernels with records but no ledger entry came from
`tuning import` and count as done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ...errors import TvmDeployError
from ...folders import default_cache_root
from ...fsutil import atomic_write_text, process_alive
from .records import RecordSet, read_database, write_database

# Bumped whenever the lowering changes the kernels that records are keyed on, so old
# records are never applied to kernels they were not tuned for.
#   1: initial
#   2: weight buffers marked layout-free (RewriteLayout repacks weights; issue 12)
#   3: packed fp32 convs with channels padded to whole vectors, and injective kernels'
#      space vectorizing within a row: a record of a v2 injective kernel replays
#      MetaSchedule's wrapping 64-wide vectors (up to 18x slower than the new default)
#   4: register tiles built on the stack (_tvm.TIR_PIPELINE): records were measured with
#      heap tiles, which ranked schedules differently (small tiles, fewer branches)
CACHE_LAYOUT_VERSION = 4
LOCK_TIMEOUT_S = float(os.environ.get("TVMDEPLOY_LOCK_TIMEOUT_S", 600))
_log = logging.getLogger("tvmdeploy.tuning")


def target_key(target: dict[str, Any]) -> str:
    canonical = json.dumps(target, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    host = target.get("host") or {}
    cpu = target.get("mcpu") or target.get("arch") or host.get("mcpu") or "generic"
    name = f"{target.get('kind', 'target')}-{cpu}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) + f"-{digest}"


class CacheLockTimeout(TvmDeployError):
    """Another process held the tuning cache's lock for longer than we wait."""


@dataclass(frozen=True)
class TargetCache:
    """The cache folder of one target (resolved TVM target dict) and one TVM version."""

    folder: Path
    target: dict[str, Any]
    tvm_version: str
    lock_timeout_s: float = LOCK_TIMEOUT_S

    @classmethod
    def open(cls, target: dict[str, Any], tvm_version: str, root: str | os.PathLike | None = None) -> "TargetCache":
        root = Path(root) if root else default_cache_root()
        folder = root / "tuning" / f"v{CACHE_LAYOUT_VERSION}" / f"tvm-{tvm_version}" / target_key(target)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            target_file = folder / "target.json"
            if not target_file.exists():
                atomic_write_text(target_file, json.dumps(target, indent=2, sort_keys=True) + "\n")
        except OSError as e:
            # A read-only cache (a shared mount, a container image) still serves plain
            # compiles; only tuning, which writes, reports it.
            _log.info("tuning cache %s is not writable (%s); reading it only", folder, e.strerror)
        return cls(folder=folder, target=target, tvm_version=tvm_version)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive access for writers of the shared files; waits at most lock_timeout_s."""
        path = self.folder / "lock"
        try:
            lock = open(path, "a+")
        except OSError as e:
            raise TvmDeployError(f"tuning cache {self.folder}: cannot write its lock file ({e.strerror}); "
                                 f"tuning needs a writable cache (--cache-dir)") from None
        with lock:
            _acquire(lock, path, self.lock_timeout_s)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def read(self) -> RecordSet:
        """The shared records, without a lock: the files are only ever replaced whole.

        Sessions of killed tuning processes are merged in first when the lock is free and
        the folder writable; otherwise they wait for a later writer.
        """
        with contextlib.suppress(OSError, TvmDeployError):
            with dataclasses.replace(self, lock_timeout_s=0).locked():
                self._recover_dead_sessions()
        records = read_database(self.folder)
        if records.skipped_lines:
            _log.warning(
                "tuning cache %s: dropped %d damaged or impossible line(s); the next tuning run rewrites the files",
                self.folder, records.skipped_lines,
            )
        return records

    def merge(self, new: RecordSet) -> int:
        """Merge records into the shared database; returns how many were new."""
        with self.locked():
            shared = read_database(self.folder)
            added = shared.merge(new)
            if added or shared.skipped_lines:
                write_database(self.folder, shared)
            return added

    def forget(self, unloadable: RecordSet, wait: bool) -> int:
        """Remove records MetaSchedule cannot load from the shared database, so that later
        compiles neither retry nor warn about them (their kernels are tuned again); returns
        how many went. wait=False (a plain compile): only when the lock is free at once
        and the folder writable; otherwise they wait for a later run."""
        if not unloadable.records:
            return 0
        bad = {(unloadable.workloads[w], rec) for w, rec in unloadable.records}
        cache = self if wait else dataclasses.replace(self, lock_timeout_s=0)
        with contextlib.suppress(OSError, TvmDeployError), cache.locked():
            shared, kept = read_database(self.folder), RecordSet()
            for w, rec in shared.records:
                if (shared.workloads[w], rec) not in bad:
                    kept.add_record(shared.workloads[w], rec)
            gone = len(shared.records) - len(kept.records)
            if gone:
                write_database(self.folder, kept)
            return gone
        return 0

    @contextlib.contextmanager
    def session(self) -> Iterator[Path]:
        """A private database folder for one tuning process, seeded with the shared records."""
        sessions = self.folder / "sessions"
        sessions.mkdir(exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=sessions))
        write_database(folder, self.read())
        try:
            yield folder
        finally:
            # Also after an error or Ctrl-C: every finished trial is a valid record.
            self.merge(read_database(folder))
            shutil.rmtree(folder, ignore_errors=True)

    def read_ledger(self) -> dict[str, dict[str, Any]]:
        path = self.folder / "ledger.json"
        try:
            ledger = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return ledger if isinstance(ledger, dict) else {}

    def update_ledger(self, entries: dict[str, dict[str, Any]]) -> None:
        """Record kernels' tuning state ({workload hash: {"state", "per_task"}})."""
        with self.locked():
            ledger = self.read_ledger()
            ledger.update(entries)
            atomic_write_text(self.folder / "ledger.json", json.dumps(ledger, indent=1, sort_keys=True) + "\n")

    def _recover_dead_sessions(self) -> None:
        sessions = self.folder / "sessions"
        if not sessions.is_dir():
            return
        for folder in sessions.iterdir():
            pid = folder.name.split("-", 1)[0]
            if pid.isdigit() and not process_alive(int(pid)):
                shared = read_database(self.folder)
                if shared.merge(read_database(folder)) or shared.skipped_lines:
                    write_database(self.folder, shared)
                shutil.rmtree(folder, ignore_errors=True)

    def export(self, path: str | os.PathLike) -> int:
        """Write this target's records as one file; returns the number of records."""
        records = self.read()
        payload = {
            "format": "tvmdeploy-tuning-records",
            "version": 1,
            "tvm": self.tvm_version,
            "target": self.target,
            "workloads": records.workloads,
            "records": [[w, json.loads(r)] for w, r in records.records],
        }
        atomic_write_text(path, json.dumps(payload) + "\n")
        return len(records.records)


def _acquire(lock, path: Path, timeout: float) -> None:
    """flock with a timeout; while waiting, say who holds it (the holder writes its pid there)."""
    deadline, said = time.monotonic() + timeout, False
    while True:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            holder = _holder(path)
            if time.monotonic() >= deadline:
                raise CacheLockTimeout(
                    f"tuning cache lock {path} is held by {holder} for more than {timeout:g} s; "
                    f"wait for it to finish, or stop it if it is stuck"
                ) from None
            if not said:
                _log.warning("waiting for the tuning cache lock %s, held by %s", path, holder)
                said = True
            time.sleep(0.1)
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()} {' '.join(sys.argv)[:200]}\n")
    lock.flush()


def _holder(path: Path) -> str:
    try:
        lines = path.read_text().strip().splitlines()
        pid, _, command = (lines[-1] if lines else "").partition(" ")
    except OSError:
        return "another process"
    return f"pid {pid} ({command or 'unknown command'})" if pid.isdigit() else "another process"


def import_records(path: str | os.PathLike, tvm_version: str, root: str | os.PathLike | None = None) -> tuple[TargetCache, int, int]:
    """Merge a file written by `TargetCache.export` into the cache of the target it names.

    Returns (target cache, records in the file, records that were new).
    """
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise TvmDeployError(f"{path}: no such file") from None
    except (ValueError, UnicodeDecodeError):
        payload = None
    if not isinstance(payload, dict) or payload.get("format") != "tvmdeploy-tuning-records":
        raise TvmDeployError(f"{path}: not a tuning-records file (write one with `tvmdeploy tuning export`)")
    if payload.get("version") != 1:
        raise TvmDeployError(f"{path}: tuning-records format version {payload.get('version')} is not supported (1 is)")
    if payload.get("tvm") != tvm_version:
        raise TvmDeployError(
            f"{path}: records were made with TVM {payload.get('tvm')}, this is TVM {tvm_version}; "
            f"schedules do not carry across TVM versions, tune again"
        )
    incoming, target = _validated_records(path, payload)
    cache = TargetCache.open(target, tvm_version, root)
    return cache, len(incoming.records), cache.merge(incoming)


def _validated_records(path: Path, payload: dict) -> tuple[RecordSet, dict]:
    """The file's records, each checked (index in range, and loadable by MetaSchedule), or
    a one-line error naming the first bad one: a bad record must not reach the cache."""
    from .database import record_loads

    workloads, records, target = payload.get("workloads"), payload.get("records"), payload.get("target")
    if not isinstance(workloads, list) or not isinstance(records, list) or not isinstance(target, dict):
        raise TvmDeployError(f"{path}: damaged tuning-records file ('workloads', 'records' and 'target' are required)")
    for i, line in enumerate(workloads):
        if not _is_workload_line(line):
            raise TvmDeployError(f"{path}: workload {i} is not a [hash, module] JSON line; export the records again")
    incoming = RecordSet()
    for i, entry in enumerate(records):
        index = entry[0] if isinstance(entry, list) and len(entry) == 2 else None
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(workloads):
            raise TvmDeployError(
                f"{path}: record {i} points at workload {index!r}, not one of 0..{len(workloads) - 1}; export the records again"
            )
        record = json.dumps(entry[1], separators=(",", ":"))
        if not isinstance(entry[1], list) or not record_loads(workloads[index], record):
            raise TvmDeployError(f"{path}: record {i} is not a tuning record MetaSchedule can load; export the records again")
        incoming.add_record(workloads[index], record)
    return incoming, target


def _is_workload_line(line) -> bool:
    try:
        value = json.loads(line) if isinstance(line, str) else None
    except ValueError:
        return False
    return isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)


def done_entry(per_task: int, converged_patience: int | None) -> dict[str, Any]:
    """The ledger entry of a kernel whose tuning finished; a kernel that converged records
    the patience it converged under (a later run asking more patience tunes it on)."""
    entry: dict[str, Any] = {"state": "done", "per_task": per_task}
    if converged_patience is not None:
        entry["converged_patience"] = converged_patience
    return entry


def ledger_says_done(entry: Any, per_task: int, patience: int) -> bool:
    """Whether a kernel's ledger entry (None: no entry; the file is not trusted) says its
    tuning finished under a budget at least this one: as many trials per kernel and, if
    its search ended by converging, at least this patience (0: never end by converging)."""
    if not isinstance(entry, dict) or entry.get("state") != "done":
        return False
    done_trials = entry.get("per_task", 0)
    if not isinstance(done_trials, int) or done_trials < per_task:
        return False
    if "converged_patience" not in entry:  # exhausted space or full trial budget
        return True
    converged_at = entry["converged_patience"]
    return isinstance(converged_at, int) and patience != 0 and patience <= converged_at
