"""Weights stored beside the library, compactly: `weights.npz` in the artifact.

Used when weights are mostly zeros (magnitude pruning): a weight with enough zeros is
stored as a bit mask (1 bit per element) plus its non-zero values, so 50 % zeros cost
about 53 % of the dense bytes; the rest are stored dense. The loader expands them once,
at load time, and passes them to the model on every call.

Shared by the compiler and the thin loader: numpy and the standard library only.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

WEIGHTS_FILE = "weights.npz"
FORMAT = "tvmdeploy-weights/1"


def encoded_nbytes(array: np.ndarray) -> int:
    """Bytes `array` takes in the file (the smaller of dense and mask + values)."""
    nonzero = int(np.count_nonzero(array))
    sparse = (array.size + 7) // 8 + nonzero * array.itemsize
    return min(array.nbytes, sparse)


def write_weights(path: Path, arrays: list[np.ndarray]) -> int:
    """Write weights in order; returns the bytes of array data written."""
    entries: dict[str, np.ndarray] = {"format": np.array(FORMAT)}
    total = 0
    for i, array in enumerate(arrays):
        array = np.ascontiguousarray(array)
        entries[f"{i}.shape"] = np.array(array.shape, dtype=np.int64)
        if encoded_nbytes(array) < array.nbytes:
            entries[f"{i}.mask"] = np.packbits((array != 0).reshape(-1))
            entries[f"{i}.values"] = array.reshape(-1)[array.reshape(-1) != 0]
        else:
            entries[f"{i}.dense"] = array
        total += encoded_nbytes(array)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, **entries)
    os.replace(tmp, path)
    return total


def read_weights(source: Path | BinaryIO, name: str | None = None) -> list[np.ndarray]:
    """The dense weight arrays, in order, from a path or from bytes already read.

    Every entry is checked before memory is allocated for it: entries numbered 0..n-1 with
    nothing missing or extra, and a declared shape no larger than its stored data allows
    (a mask of k bytes covers at most 8k elements), so a small file cannot ask for gigabytes.
    """
    where = name or str(source)
    try:
        data = np.load(source, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, io.UnsupportedOperation) as e:
        raise ValueError(f"{where}: not a readable weights file ({e})") from e
    if not hasattr(data, "files"):
        raise ValueError(f"{where}: not a {FORMAT} weights file (a single array, not an archive)")
    with data:
        try:
            if "format" not in data.files or str(data["format"]) != FORMAT:
                raise ValueError(f"{where}: not a {FORMAT} weights file")
            count = _entry_count(data.files, where)
            _check_declared_sizes(data.zip, where)
            return [_read_entry(data, i, where) for i in range(count)]
        except (KeyError, zipfile.BadZipFile, EOFError, OSError) as e:
            raise ValueError(f"{where}: damaged weights file ({type(e).__name__}: {e})") from None


def _entry_count(files: list[str], where: str) -> int:
    count = sum(1 for name in files if name.endswith(".shape"))
    expected = {"format"} | {f"{i}.{kind}" for i in range(count) for kind in ("shape", "dense", "mask", "values")}
    extra = sorted(set(files) - expected)
    if extra:
        raise ValueError(f"{where}: unexpected entry '{extra[0]}' (entries are 0..{count - 1})")
    return count


def _check_declared_sizes(archive: zipfile.ZipFile, where: str) -> None:
    """Every array's declared bytes fit in the bytes stored for it (checked before numpy
    allocates an array of the declared shape); stored uncompressed, as write_weights does."""
    for info in archive.infolist():
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(f"{where}: entry '{info.filename}' is compressed; {FORMAT} files store entries uncompressed")
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(member)
        declared = dtype.itemsize
        for d in shape:
            declared *= d
        if dtype.hasobject or declared > info.file_size:
            raise ValueError(
                f"{where}: entry '{info.filename}' declares {declared} bytes of {dtype} but stores {info.file_size}"
            )


def _read_entry(data, i: int, where: str) -> np.ndarray:
    shape = data[f"{i}.shape"]
    if shape.dtype.kind not in "iu" or shape.ndim != 1 or len(shape) > 32 or (shape < 0).any():
        raise ValueError(f"{where}: weight {i} has an invalid shape {shape.tolist()}")
    shape = tuple(int(d) for d in shape)
    if f"{i}.dense" in data.files:
        dense = data[f"{i}.dense"]
        if dense.shape != shape:
            raise ValueError(f"{where}: weight {i} is stored as {list(dense.shape)} but declared {list(shape)}")
        return dense
    mask_bits = data[f"{i}.mask"]
    values = data[f"{i}.values"]
    size = 1
    for d in shape:
        size *= d
    if mask_bits.dtype != np.uint8 or size > 8 * mask_bits.size:
        raise ValueError(f"{where}: weight {i} declares {size} elements, more than its mask of {mask_bits.size} bytes holds")
    mask = np.unpackbits(mask_bits, count=size).astype(bool)
    if int(mask.sum()) != values.size:
        raise ValueError(f"{where}: weight {i} has {values.size} values for {int(mask.sum())} non-zero positions")
    dense = np.zeros(size, dtype=values.dtype)
    dense[mask] = values.reshape(-1)
    return dense.reshape(shape)
