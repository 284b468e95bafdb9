"""An artifact folder as a closed world: files opened once, by plain name, never followed out.

The folder is opened once (O_DIRECTORY) and every file in it is opened relative to that
descriptor with O_NOFOLLOW: a symlink, a device file or a name with a path in it is
refused, so nothing outside the folder is ever read. Each file is read once from its
descriptor, hashed, and the same bytes are what the loader uses (a private copy of the
library for dlopen, the weights parsed from memory): nothing can be swapped between the
check and the use.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import ArtifactError
from .schema import plain_name_problem

_CHUNK = 1 << 20


class ArtifactFolder:
    """An open artifact folder: read files in it by plain name, verified against sha256s."""

    _fd: int | None = None

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ArtifactError(f"{self.path}: no such artifact folder") from None
        except NotADirectoryError:
            raise ArtifactError(f"{self.path}: not a folder; an artifact is the folder `tvmdeploy compile -o` wrote") from None
        except OSError as e:
            raise ArtifactError(f"{self.path}: cannot open the artifact folder ({e.strerror})") from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "ArtifactFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[tuple[int, int]]:
        """(descriptor, size) of a regular file directly in the folder; refuses anything else."""
        problem = plain_name_problem(name)
        if problem:
            raise ArtifactError(f"{self.path}: {problem}; refusing to open it")
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # NONBLOCK: a FIFO cannot stall us
        try:
            fd = os.open(name, flags, dir_fd=self._fd)
        except FileNotFoundError:
            raise ArtifactError(f"{self.path}: {name} is missing; the artifact is incomplete, recompile it") from None
        except OSError as e:  # ELOOP: a symlink
            raise ArtifactError(f"{self.path}: {name} cannot be opened ({e.strerror}); it must be a plain file in the folder") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ArtifactError(f"{self.path}: {name} is not a regular file (a device, FIFO or folder); refusing it")
            yield fd, info.st_size
        finally:
            os.close(fd)

    def exists(self, name: str) -> bool:
        """Whether anything (a file, a link, a folder) has this plain name in the folder."""
        if plain_name_problem(name):
            return False
        try:
            os.stat(name, dir_fd=self._fd, follow_symlinks=False)
            return True
        except OSError:
            return False

    def size(self, name: str) -> int | None:
        """Size of a listed regular file (None when missing or not a plain file)."""
        try:
            with self.open(name) as (_, size):
                return size
        except ArtifactError:
            return None

    def read(self, name: str, limit: int) -> bytes:
        """A whole (small) file, refused past `limit` bytes."""
        with self.open(name) as (fd, size):
            if size > limit:
                raise ArtifactError(f"{self.path}: {name} is {size} bytes, more than the {limit} a {name} may have")
            return _read_all(fd, limit + 1)

    def read_verified(self, name: str, expected: str) -> bytes:
        """The bytes of `name`, after checking them against the sha256 `expected`."""
        with self.open(name) as (fd, size):
            data = _read_all(fd, size + 1)
        self._check(name, hashlib.sha256(data).hexdigest(), expected)
        return data

    def verify(self, name: str, expected: str) -> int:
        """Hash one file from its descriptor; returns its size."""
        digest = hashlib.sha256()
        with self.open(name) as (fd, size):
            while chunk := os.read(fd, _CHUNK):
                digest.update(chunk)
        self._check(name, digest.hexdigest(), expected)
        return size

    @contextlib.contextmanager
    def private_copy(self, name: str, expected: str) -> Iterator[Path]:
        """A copy of `name` in a folder only this user can write, verified while copying.

        dlopen needs a path, and TVM resolves symlinks such as /proc/self/fd/N back to the
        original path; a copy of the verified bytes is what gets loaded instead.
        """
        private = Path(tempfile.mkdtemp(prefix="tvmdeploy-load-"))
        try:
            copy = private / name
            digest = hashlib.sha256()
            with self.open(name) as (fd, _), open(copy, "wb") as out:
                while chunk := os.read(fd, _CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            self._check(name, digest.hexdigest(), expected)
            yield copy
        finally:
            shutil.rmtree(private, ignore_errors=True)

    def _check(self, name: str, actual: str, expected: str) -> None:
        if actual != expected:
            raise ArtifactError(
                f"{self.path}: {name} does not match the sha256 in manifest.json (modified or corrupted "
                f"after the build); refusing to load it, recompile or re-download the artifact"
            )


def _read_all(fd: int, limit: int) -> bytes:
    parts, total = [], 0
    while total < limit and (chunk := os.read(fd, min(_CHUNK, limit - total))):
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)
