"""Single-file artifacts: an artifact folder packed into one .tvmd file (a gzipped tar).

    tvmdeploy pack ARTIFACT -o model.tvmd      tvmdeploy.runtime.load("model.tvmd")

A bundle holds the artifact's files as flat members (manifest.json, manifest.sig if
signed, and exactly the files the manifest lists). Unpacking trusts nothing in it: every
member must be a regular file with a plain name (no directory part, so no `../`, no
absolute path), no links, devices or directories, no duplicates, nothing the manifest
does not list, at most MAX_MEMBERS members and MAX_MEMBER_BYTES each (counted while
writing, not taken from the header). Members are written with O_EXCL|O_NOFOLLOW into a
fresh private temporary folder, which the loader then verifies (signature, hashes,
machine) like any artifact folder before any code is loaded, and which is removed once
the model is loaded.

Imports nothing from the compile side and never TVM.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path

from ..errors import ArtifactError
from .artifact_manifest import read_manifest, verify_files
from .manifest import MANIFEST_NAME
from .signing import SIGNATURE_NAME

BUNDLE_SUFFIX = ".tvmd"
MAX_MEMBERS = 64
MAX_MEMBER_BYTES = 4 << 30
MAX_TOTAL_BYTES = 8 << 30
_CHUNK = 1 << 20


class BundleError(ArtifactError):
    """A bundle file is unreadable or holds something an artifact never does."""


def pack(artifact: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Write the artifact folder (verified first) into one bundle file; returns its path."""
    folder = Path(artifact)
    manifest = read_manifest(folder)
    verify_files(folder, manifest)
    names = [MANIFEST_NAME, *([SIGNATURE_NAME] if (folder / SIGNATURE_NAME).is_file() else []), *sorted(manifest.files)]
    for name in names:
        if not _plain_name(name):
            raise BundleError(f"{folder}: the manifest lists '{name}', which is not a plain file name; recompile the artifact")
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        with tarfile.open(tmp, "w:gz", format=tarfile.PAX_FORMAT) as tar:
            for name in names:
                data_path = folder / name
                info = tarfile.TarInfo(name)
                info.size = data_path.stat().st_size
                info.mode = 0o644
                info.mtime = 0  # the same artifact packs to the same bytes (modulo gzip)
                with open(data_path, "rb") as f:
                    tar.addfile(info, f)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\x00")


def _refuse(bundle: Path, member: str, why: str) -> BundleError:
    return BundleError(f"{bundle}: refusing to unpack member {member!r}: {why}; not a bundle from `tvmdeploy pack`")


def unpack(
    bundle: str | os.PathLike,
    max_members: int = MAX_MEMBERS,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> Path:
    """Extract a bundle safely into a new private temporary folder and return it.

    The caller owns the folder (remove it with shutil.rmtree). Raises BundleError (one
    line) for anything an artifact bundle never holds; nothing is left behind then.
    """
    path = Path(bundle)
    dest = Path(tempfile.mkdtemp(prefix="tvmdeploy-bundle-"))  # mode 0700: this user only
    try:
        _extract(path, dest, max_members, max_member_bytes, max_total_bytes)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest


def _extract(path: Path, dest: Path, max_members: int, max_member_bytes: int, max_total_bytes: int) -> None:
    try:
        tar = tarfile.open(path, "r:*")
    except FileNotFoundError:
        raise BundleError(f"{path}: no such bundle file") from None
    except (tarfile.TarError, OSError, EOFError) as e:
        raise BundleError(f"{path}: not a tvmdeploy bundle (not a tar file: {e}); make one with `tvmdeploy pack`") from None
    seen: set[str] = set()
    total = 0
    with tar:
        try:
            # Iterating reads one header at a time: a bundle with millions of members is
            # refused at max_members + 1 without listing them all.
            for member in tar:
                name = member.name
                if len(seen) >= max_members:
                    raise _refuse(path, name, f"more than {max_members} members")
                if member.issym() or member.islnk():
                    raise _refuse(path, name, f"a link (to {member.linkname!r})")
                if not member.isreg():
                    raise _refuse(path, name, "not a regular file (a directory, device or fifo)")
                if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
                    raise _refuse(path, name, "an absolute path")
                if ".." in name.replace("\\", "/").split("/"):
                    raise _refuse(path, name, "a path out of the folder (..)")
                if not _plain_name(name):
                    raise _refuse(path, name, "a path with a folder part (artifact files are flat)")
                if name in seen:
                    raise _refuse(path, name, "a second member of that name")
                if member.size > max_member_bytes:
                    raise _refuse(path, name, f"{member.size} bytes, over the {max_member_bytes}-byte limit per member")
                total += member.size
                if total > max_total_bytes:
                    raise _refuse(path, name, f"the members add up to over {max_total_bytes} bytes")
                seen.add(name)
                _write_member(tar, member, dest / name, max_member_bytes, path)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise BundleError(f"{path}: the bundle is truncated or corrupt ({type(e).__name__}: {e}); download it again") from None
    if MANIFEST_NAME not in seen:
        raise BundleError(f"{path}: the bundle holds no {MANIFEST_NAME}; not a bundle from `tvmdeploy pack`")
    listed = {MANIFEST_NAME, SIGNATURE_NAME, *read_manifest(dest).files}
    extra = sorted(seen - listed)
    if extra:
        raise _refuse(path, extra[0], f"not listed in the bundle's {MANIFEST_NAME}")


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, limit: int, bundle: Path) -> None:
    source = tar.extractfile(member)
    if source is None:  # pragma: no cover - regular files always have data
        raise _refuse(bundle, member.name, "no data")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    written = 0
    with os.fdopen(fd, "wb") as out, source:
        while True:
            chunk = source.read(_CHUNK)
            if not chunk:
                break
            written += len(chunk)
            if written > limit:  # never more than the header said, but the limit is what counts
                raise _refuse(bundle, member.name, f"over the {limit}-byte limit per member")
            out.write(chunk)
    if written != member.size:
        raise BundleError(f"{bundle}: member {member.name!r} is truncated; download the bundle again")


@contextlib.contextmanager
def unpacked(bundle: str | os.PathLike):
    """The bundle unpacked (see unpack) into a folder that is removed when the block ends;
    an ArtifactError from the block names the bundle, not the temporary folder."""
    folder = unpack(bundle)
    try:
        yield folder
    except ArtifactError as e:
        raise type(e)(str(e).replace(str(folder), str(bundle))) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


__all__ = ["BUNDLE_SUFFIX", "BundleError", "pack", "unpack", "unpacked"]
