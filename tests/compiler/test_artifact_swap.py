"""Never delete what is not ours; never lose the old artifact (fault injection into the swap).

The swap is interrupted between each of its steps, by an exception in-process and by
SIGKILL / SIGTERM in a real child process, and the destination must then hold the old or
the new artifact (after SIGKILL between the fallback's two renames: once the next compile
has run its recovery).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tvmdeploy import compile_model
from tvmdeploy.compiler import artifact
from tvmdeploy.errors import ArtifactError


def _fake_artifact(folder: Path, tag: str) -> None:
    """The manifest fields is_artifact judges by, plus a tag telling old from new."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"schema_version": 1, "versions": {"tvmdeploy": "test"}, "files": {}, "library": "model.so", "tag": tag}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "model.so").write_text(tag)


def _tag(folder: Path) -> str | None:
    try:
        return json.loads((folder / "manifest.json").read_text())["tag"]
    except (OSError, ValueError):
        return None


def test_foreign_folder_with_a_manifest_json_is_refused_before_the_model_is_read(tmp_path):
    out = tmp_path / "webapp"
    out.mkdir()
    (out / "manifest.json").write_text('{"name": "my web app", "version": "1.0"}')
    (out / "index.html").write_text("<html>")
    with pytest.raises(ArtifactError, match=r"webapp exists and is not a tvmdeploy artifact; refusing"):
        compile_model(tmp_path / "no-such-model.onnx", "host", output_dir=out)  # model never opened
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "manifest.json"]


def test_a_file_at_the_destination_is_refused(tmp_path):
    target = tmp_path / "out"
    target.write_text("data")
    with pytest.raises(ArtifactError, match=r"out exists and is not a folder"):
        artifact.check_destination(target)
    assert target.read_text() == "data"


def test_real_recompile_uses_the_atomic_exchange(tmp_path, digits_model, monkeypatch):
    if artifact._renameat2 is None:
        pytest.skip("no renameat2 in this libc")
    calls = []
    real = artifact._renameat2
    monkeypatch.setattr(artifact, "_renameat2", lambda *a: calls.append(a) or real(*a))
    out = tmp_path / "art"
    compile_model(digits_model, "host", output_dir=out)
    compile_model(digits_model, "host", output_dir=out)
    assert len(calls) == 1 and calls[0][3] == os.fsencode(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


class _Fault(Exception):
    pass


@pytest.mark.parametrize("exchange", [True, False])
@pytest.mark.parametrize("fail_at", [0, 1, 2])
def test_exception_at_any_step_leaves_old_or_new(tmp_path, monkeypatch, exchange, fail_at):
    out = tmp_path / "art"
    _fake_artifact(out, "old")
    calls = {"n": 0}
    real_rename = os.rename

    def failing_rename(a, b):
        calls["n"] += 1
        if calls["n"] == fail_at + 1:
            raise _Fault(f"injected at rename {fail_at}")
        return real_rename(a, b)

    if not exchange:
        monkeypatch.setattr(artifact, "_renameat2", None)
    elif artifact._renameat2 is None:
        pytest.skip("no renameat2 in this libc")
    monkeypatch.setattr(os, "rename", failing_rename)
    with artifact.staging_folder(out) as staging:
        _fake_artifact(staging, "new")
        try:
            artifact.swap_into_place(staging, out)
        except _Fault:
            pass
    monkeypatch.setattr(os, "rename", real_rename)
    assert _tag(out) in ("old", "new")
    artifact.recover_leftovers(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path
    from tvmdeploy.compiler import artifact

    def _fake_artifact(folder, tag):
        manifest = {"schema_version": 1, "versions": {"tvmdeploy": "test"}, "files": {}, "library": "model.so", "tag": tag}
        (folder / "manifest.json").write_text(json.dumps(manifest))

    out, mode, step = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    sig = signal.SIGTERM if mode.endswith("term") else signal.SIGKILL
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))  # like the CLI: unwind on SIGTERM
    count = {"n": 0}

    def hit():
        if count["n"] == step:
            os.kill(os.getpid(), sig)
        count["n"] += 1

    real_rename, real_exchange = os.rename, artifact._renameat2
    def rename(a, b):
        hit()
        real_rename(a, b)
        if mode.startswith("fallback") and count["n"] == 2:
            hit()  # between the second rename and the sweep
    os.rename = rename
    if mode.startswith("exchange"):
        def exchange(*args):
            hit()
            result = real_exchange(*args)
            hit()
            return result
        artifact._renameat2 = exchange
    else:
        artifact._renameat2 = None
    with artifact.staging_folder(out) as staging:
        _fake_artifact(staging, "new")
        artifact.swap_into_place(staging, out)
    print("swapped")
    """
)


@pytest.mark.parametrize(
    "mode, step",
    [("exchange-kill", 0), ("exchange-kill", 1), ("fallback-kill", 0), ("fallback-kill", 1), ("fallback-kill", 2),
     ("fallback-term", 1), ("fallback-term", 2)],
)
def test_killed_between_swap_steps(tmp_path, mode, step):
    if mode.startswith("exchange") and artifact._renameat2 is None:
        pytest.skip("no renameat2 in this libc")
    out = tmp_path / "art"
    _fake_artifact(out, "old")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(out), mode, str(step)],
        capture_output=True, text=True, timeout=120,
    )
    if mode.endswith("term"):
        # SIGTERM is held while the fallback's renames run: the swap completes first.
        assert proc.returncode == 143 and "swapped" not in proc.stdout, proc.stderr
        assert _tag(out) == "new"
    else:
        assert proc.returncode == -signal.SIGKILL, proc.stderr
    if mode.startswith("exchange") or mode.endswith("term"):
        assert _tag(out) in ("old", "new")  # at once: nothing waits for a recovery
    # The next compile's recovery restores or sweeps whatever the killed one left.
    with artifact.staging_folder(out):
        pass
    assert _tag(out) in ("old", "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_old_folder_of_a_live_process_is_left_alone(tmp_path):
    out = tmp_path / "art"
    _fake_artifact(out, "new")
    busy = tmp_path / f".art.old-{os.getpid()}-xyz"
    _fake_artifact(busy, "old")
    artifact.recover_leftovers(out)
    assert busy.exists() and _tag(out) == "new"


def test_old_named_folder_that_is_not_an_artifact_is_left_alone(tmp_path):
    out = tmp_path / "art"
    _fake_artifact(out, "new")
    lookalike = tmp_path / ".art.old-999999999-mine"  # dead pid, but no artifact inside
    lookalike.mkdir()
    (lookalike / "notes.txt").write_text("keep")
    artifact.recover_leftovers(out)
    assert (lookalike / "notes.txt").read_text() == "keep"
