"""Package: an artifact folder appears whole or not at all, and nothing else is ever deleted.

Everything is written into a hidden staging folder beside the destination, the
manifest last (with the hash of every other file), and then swapped into place:
with renameat2(RENAME_EXCHANGE) in one atomic step where the kernel has it, otherwise
old-aside-then-new-in with the usual termination signals blocked in between. A
destination that holds anything but a tvmdeploy artifact is refused before the build.

Leftovers of killed compiles are named after their process: `.NAME.partial-PID-*`
(staging) and `.NAME.old-PID-*` (the previous artifact, moved aside). The next compile
to the same destination restores an `.old` folder when the destination is missing
(the kill fell between the two renames) and sweeps the rest.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from ..errors import ArtifactError
from ..fsutil import process_alive
from ..runtime.manifest import MANIFEST_NAME, Manifest, sha256_file

_LEFTOVER_KINDS = ("old", "partial")  # restore order matters: an old artifact first
_BLOCKED = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT}


def check_destination(destination: Path) -> None:
    """Refuse, before any work, a destination that is not ours to replace."""
    if destination.is_symlink() or (destination.exists() and not destination.is_dir()):
        raise ArtifactError(f"{destination} exists and is not a folder; choose another -o folder")
    if destination.is_dir() and any(destination.iterdir()) and not is_artifact(destination):
        raise ArtifactError(
            f"{destination} exists and is not a tvmdeploy artifact; refusing to replace it "
            f"(choose another -o folder or remove it)"
        )


def is_artifact(folder: Path) -> bool:
    """Whether `folder` holds a tvmdeploy artifact, judged by its manifest's schema and tool
    fields (a folder that merely has a file named manifest.json is not one)."""
    try:
        data = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return (
        isinstance(data, dict)
        and isinstance(data.get("schema_version"), int)
        and isinstance(data.get("versions"), dict)
        and "tvmdeploy" in data["versions"]
        and isinstance(data.get("files"), dict)
        and isinstance(data.get("library"), str)
    )


@contextlib.contextmanager
def staging_folder(destination: Path) -> Iterator[Path]:
    """A fresh folder on the destination's file system (so the final rename is atomic)."""
    check_destination(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    recover_leftovers(destination)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{destination.name}.partial-{os.getpid()}-", dir=destination.parent)
    )
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; an artifact is not
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def recover_leftovers(destination: Path) -> None:
    """Restore or sweep what compiles killed mid-way (SIGKILL skips every cleanup) left here."""
    for kind in _LEFTOVER_KINDS:
        for folder in sorted(destination.parent.glob(f".{destination.name}.{kind}-*")):
            pid = folder.name.rsplit(f".{kind}-", 1)[1].split("-", 1)[0]
            if not pid.isdigit() or process_alive(int(pid)):
                continue
            if kind == "old" and not is_artifact(folder):
                continue  # only artifacts are ever moved aside: this one is not ours
            if kind == "old" and not destination.exists():
                os.rename(folder, destination)  # killed between the two renames: put it back
            else:
                shutil.rmtree(folder, ignore_errors=True)


def finalize(staging: Path, destination: Path, manifest: Manifest, signer=None) -> Manifest:
    """Hash the staged files, write the manifest (and its signature, with a signer from
    signing.load_signer), and swap the folder into place."""
    manifest.files = {
        p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file() and p.name != MANIFEST_NAME
    }
    tmp_manifest = staging / (MANIFEST_NAME + ".tmp")
    with open(tmp_manifest, "w", encoding="utf-8") as f:
        f.write(manifest.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_manifest, staging / MANIFEST_NAME)
    if signer is not None:
        from .signing import write_signature

        write_signature(staging, signer)
    check_destination(destination)  # again: it may have changed during the build
    swap_into_place(staging, destination)
    return manifest


def swap_into_place(staging: Path, destination: Path) -> None:
    """Put `staging` at `destination`; whatever happens, `destination` holds the old or the new."""
    if not destination.exists():
        os.rename(staging, destination)  # atomic; fails (ENOTEMPTY) if one appeared meanwhile
    elif exchange(staging, destination):
        shutil.rmtree(staging, ignore_errors=True)  # staging now holds the old artifact
    else:
        _swap_with_two_renames(staging, destination)


def _swap_with_two_renames(staging: Path, destination: Path) -> None:
    retired = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-{os.getpid()}-", dir=destination.parent))
    os.rmdir(retired)
    with signals_held():  # SIGKILL cannot be held: the next compile restores `retired`
        os.rename(destination, retired)
        try:
            os.rename(staging, destination)
        except BaseException:
            os.rename(retired, destination)
            raise
    shutil.rmtree(retired, ignore_errors=True)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C, SIGTERM, SIGHUP and SIGQUIT until the block ends, then deliver them.

    Blocking the signal mask is not enough: it is per thread, and a signal sent to the
    process goes to any thread that does not block it (TVM starts several), after which
    Python runs its handler in the main thread between any two bytecodes. So the handlers
    themselves are swapped for ones that only take note, and the noted signals are raised
    again once the handlers are back.
    """
    if threading.current_thread() is not threading.main_thread():
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in _BLOCKED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        for sig in dict.fromkeys(caught):
            signal.raise_signal(sig)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _load_renameat2():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()


def exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one atomic step; False where the kernel or file system cannot."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False  # an old kernel, or a file system without exchange (some network ones)
    raise OSError(error, os.strerror(error), str(b))

