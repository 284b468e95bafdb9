"""The tuning cache heals itself: damage costs a re-tune of the damaged records, never a compile.

One real tuning run (the MLP, 3 trials) fills a cache; each test damages a copy of it the
way a killed process, a full disk or a bad import would, and compiles against it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MODELS

from tvmdeploy import compile_model
from tvmdeploy.compiler.tuning.cache import CACHE_LAYOUT_VERSION, CacheLockTimeout, TargetCache, import_records
from tvmdeploy.compiler.tuning.records import RECORD_FILE, WORKLOAD_FILE, read_database
from tvmdeploy.compiler.tuning.tuner import TuningBudget
from tvmdeploy.errors import TvmDeployError

MLP = MODELS / "mlp.onnx"


@pytest.fixture(scope="module")
def tuned_cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tuned") / "cache"
    result = compile_model(MLP, "host", output_dir=root.parent / "a", tune=TuningBudget(trials=3), cache_dir=root)
    assert result.manifest.extra["tuning"]["kernels_scheduled_from_cache"] == 3
    return root


def _copy(tuned_cache: Path, tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "cache"
    shutil.copytree(tuned_cache, root, ignore=shutil.ignore_patterns("logs", "sessions"))
    (folder,) = root.glob(f"tuning/v{CACHE_LAYOUT_VERSION}/tvm-*/llvm-*")
    return root, folder


def _plain_compile(root: Path, tmp_path: Path) -> int:
    result = compile_model(MLP, "host", output_dir=tmp_path / "out", cache_dir=root)
    return result.manifest.extra["tuning"]["kernels_scheduled_from_cache"]


def _records_lines(folder: Path) -> list[str]:
    return (folder / RECORD_FILE).read_text().splitlines(keepends=True)


def _damage_truncate(folder: Path) -> None:
    lines = _records_lines(folder)
    (folder / RECORD_FILE).write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])


def _damage_garbage(folder: Path) -> None:
    with open(folder / RECORD_FILE, "ab") as f:
        f.write(b"\x00\xff garbage that is not JSON\n[1, 2, 3]\n{\"a\": 1}\n")


def _damage_negative_index(folder: Path) -> None:
    lines = _records_lines(folder)
    value = json.loads(lines[0])
    (folder / RECORD_FILE).write_text("".join(lines) + json.dumps([-1, value[1]]) + "\n" + json.dumps([99, value[1]]) + "\n")


def _damage_impossible_trace(folder: Path) -> None:
    """A line of the right shape whose trace MetaSchedule cannot replay."""
    lines = _records_lines(folder)
    value = json.loads(lines[0])
    value[1][0] = [[["NoSuchInstruction", [], [], ["b0"]]], []]
    (folder / RECORD_FILE).write_text("".join(lines[1:]) + json.dumps(value) + "\n")


def _damage_workload(folder: Path) -> None:
    lines = (folder / WORKLOAD_FILE).read_text().splitlines(keepends=True)
    (folder / WORKLOAD_FILE).write_text("not json\n" + "".join(lines[1:]))


@pytest.mark.parametrize(
    "damage, scheduled",
    [
        # Each kernel has two records: its measured default and a tuned trial. A kernel
        # that loses one keeps the other.
        (_damage_truncate, 3),
        (_damage_garbage, 3),
        (_damage_negative_index, 3),
        (_damage_impossible_trace, 3),
        (_damage_workload, 2),  # the records of the damaged workload line go: the kernel gets the default schedule
    ],
)
def test_damaged_cache_never_fails_a_plain_compile(tuned_cache, tmp_path, caplog, damage, scheduled):
    root, folder = _copy(tuned_cache, tmp_path)
    damage(folder)
    with caplog.at_level(logging.WARNING, logger="tvmdeploy.tuning"):
        count = _plain_compile(root, tmp_path)
    assert count == scheduled
    assert "dropped" in caplog.text


def test_a_record_that_cannot_replay_is_removed_from_the_cache(tuned_cache, tmp_path, caplog):
    """Dropped once, not on every compile: the first plain compile removes it from the files."""
    root, folder = _copy(tuned_cache, tmp_path)
    before = len(read_database(folder).records)
    _damage_impossible_trace(folder)
    with caplog.at_level(logging.WARNING, logger="tvmdeploy.tuning"):
        assert _plain_compile(root, tmp_path) == 3
    assert "dropped 1 record(s)" in caplog.text and "removed from the cache" in caplog.text
    assert len(read_database(folder).records) == before - 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tvmdeploy.tuning"):
        assert _plain_compile(root, tmp_path / "again") == 3
    assert "dropped" not in caplog.text


def test_a_plain_compile_leaves_an_unloadable_record_while_the_lock_is_held(tuned_cache, tmp_path, caplog):
    root, folder = _copy(tuned_cache, tmp_path)
    _damage_impossible_trace(folder)
    damaged = (folder / RECORD_FILE).read_bytes()
    with open(folder / "lock", "a+") as lock, caplog.at_level(logging.WARNING, logger="tvmdeploy.tuning"):
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        assert _plain_compile(root, tmp_path) == 3
    assert "left in the cache" in caplog.text
    assert (folder / RECORD_FILE).read_bytes() == damaged


def test_damage_is_repaired_by_the_next_tuning_run(tuned_cache, tmp_path):
    root, folder = _copy(tuned_cache, tmp_path)
    _damage_garbage(folder)
    assert read_database(folder).skipped_lines == 3
    result = compile_model(MLP, "host", output_dir=tmp_path / "t", tune=TuningBudget(trials=3), cache_dir=root)
    assert result.manifest.extra["tuning"]["kernels_scheduled_from_cache"] == 3
    assert read_database(folder).skipped_lines == 0  # rewritten whole by the merge


def test_plain_compile_takes_no_lock(tuned_cache, tmp_path):
    """Another process holds the lock (a long tuning merge): a plain compile still reads."""
    root, folder = _copy(tuned_cache, tmp_path)
    with open(folder / "lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        assert _plain_compile(root, tmp_path) == 3


HOLDER = """
import fcntl, os, sys, time
f = open(sys.argv[1], "a+")
fcntl.flock(f, fcntl.LOCK_EX)
f.seek(0); f.truncate(); f.write("%d holder-script" % os.getpid()); f.flush()  # as TargetCache.locked does
print("held", flush=True)
time.sleep(600)
"""


def test_lock_wait_times_out_naming_the_holder(tuned_cache, tmp_path):
    root, folder = _copy(tuned_cache, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder / "lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        cache = TargetCache(folder, json.loads((folder / "target.json").read_text()), "x", lock_timeout_s=0.5)
        with pytest.raises(CacheLockTimeout, match=rf"held by pid {holder.pid} \(holder-script\) for more than 0.5 s"):
            cache.merge(read_database(folder))
    finally:
        holder.kill()
        holder.wait()


def test_read_only_cache_never_fails_a_plain_compile(tuned_cache, tmp_path):
    """The cache on a read-only file system (EROFS), or unwritable for a non-root user."""
    root, _ = _copy(tuned_cache, tmp_path)
    compile_cmd = [sys.executable, "-m", "tvmdeploy.cli", "compile", str(MLP), "-o", str(tmp_path / "out"), "--cache-dir", str(root)]
    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", str(root)], check=True)
        command = compile_cmd
    elif shutil.which("unshare") and subprocess.run(["unshare", "-m", "true"]).returncode == 0:
        mount = f"mount --bind -o ro {root} {root}"
        command = ["unshare", "-m", "sh", "-c", f'{mount} && exec "$@"', "sh", *compile_cmd]
    else:
        pytest.skip("cannot make a read-only folder here (root without mount namespaces)")
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "3 with tuned schedules from the cache" in proc.stdout


def _exported(tuned_cache: Path, tmp_path: Path) -> tuple[Path, dict]:
    root, folder = _copy(tuned_cache, tmp_path)
    cache = TargetCache.open(json.loads((folder / "target.json").read_text()), folder.parent.name[4:], root)
    path = tmp_path / "records.json"
    assert cache.export(path) == 6  # per kernel: its measured default and one trial
    return path, json.loads(path.read_text())


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: p["records"].append([-1, p["records"][0][1]]), r"record 6 points at workload -1, not one of 0..2"),
        (lambda p: p["records"].append([True, p["records"][0][1]]), r"record 6 points at workload True"),
        (lambda p: p["records"].append(["0", []]), r"record 6 points at workload '0'"),
        (lambda p: p["records"].append([0, [[["NoSuchInstruction", [], [], []]], []]]), r"record 6 is not a tuning record MetaSchedule can load"),
        (lambda p: p["workloads"].append("{}"), r"workload 3 is not a \[hash, module\] JSON line"),
        (lambda p: p.update(target=[]), r"'workloads', 'records' and 'target' are required"),
    ],
)
def test_import_validates_every_record(tuned_cache, tmp_path, edit, message):
    path, payload = _exported(tuned_cache, tmp_path)
    edit(payload)
    path.write_text(json.dumps(payload))
    fresh = tmp_path / "fresh"
    with pytest.raises(TvmDeployError, match=message):
        import_records(path, payload["tvm"], fresh)
    assert not list(fresh.glob("tuning/*/*/*/" + RECORD_FILE))  # nothing reached a cache


def test_valid_import_still_works(tuned_cache, tmp_path):
    path, payload = _exported(tuned_cache, tmp_path)
    cache, total, added = import_records(path, payload["tvm"], tmp_path / "fresh")
    assert (total, added) == (6, 6)
    assert _plain_compile(tmp_path / "fresh", tmp_path) == 3
