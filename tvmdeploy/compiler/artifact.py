"""Package: an artifact folder appears whole or not at all.

Everything is written into a hidden staging folder beside the destination, the
manifest last (with the hash of every other file), and then renamed into place. A
failed or interrupted compile removes its staging folder and leaves any existing
artifact at the destination untouched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import ArtifactError
from ..fsutil import process_alive
from ..runtime.manifest import MANIFEST_NAME, Manifest, sha256_file


@contextlib.contextmanager
def staging_folder(destination: Path) -> Iterator[Path]:
    """A fresh folder on the destination's file system (so the final rename is atomic)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(destination)
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


def _remove_stale_staging(destination: Path) -> None:
    """Staging folders of compiles that were killed (SIGKILL skips every cleanup)."""
    for folder in destination.parent.glob(f".{destination.name}.partial-*"):
        pid = folder.name.rsplit(".partial-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)



def finalize(staging: Path, destination: Path, manifest: Manifest, signer=None) -> Manifest:
    """Hash the staged files, write the manifest (and its signature, with a signer from
    signing.load_signer), and move the folder into place."""
    manifest.files = {
        p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file() and p.name != MANIFEST_NAME
    }
    tmp_manifest = staging / (MANIFEST_NAME + ".tmp")
    tmp_manifest.write_text(manifest.to_json())
    os.replace(tmp_manifest, staging / MANIFEST_NAME)
    if signer is not None:
        from .signing import write_signature

        write_signature(staging, signer)
    if destination.exists() and not (destination / MANIFEST_NAME).exists() and any(destination.iterdir()):
        raise ArtifactError(
            f"{destination} exists and is not a tvmdeploy artifact; refusing to replace it "
            f"(choose another -o folder or remove it)"
        )
    # Directories cannot be swapped in one rename: move the old artifact aside first,
    # then the new one in, then delete the old one.
    retired = None
    if destination.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-", dir=destination.parent))
        os.rmdir(retired)
        os.replace(destination, retired)
    try:
        os.replace(staging, destination)
    except BaseException:
        if retired is not None:
            os.replace(retired, destination)
        raise
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)
    return manifest
