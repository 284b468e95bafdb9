"""Weights stored beside the library, compactly: `weights.npz` in the artifact.

Each weight is stored in whichever of three encodings is smallest:
- dense: the array as it is;
- sparse (magnitude pruning): a bit mask (1 bit per element) plus the non-zero values, so
  50 % zeros cost about 53 % of the dense bytes;
- codebook (weight clustering): at most 2**bits distinct values, stored once as a
  codebook, and one `bits`-bit index per element (4 bits: an eighth of float32's bytes).
The loader expands them once, at load time, and passes them to the model on every call.

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
MAX_CODEBOOK_BITS = 8
# Looking for a codebook costs a sort; a weight whose first values already hold more
# distinct values than any codebook can is skipped after this many.
_CODEBOOK_PROBE = 4096


def encoded_nbytes(array: np.ndarray) -> int:
    """Bytes `array` takes in the file (the smallest of its encodings)."""
    return _choose_encoding(array)[1]


def _choose_encoding(array: np.ndarray) -> tuple[str, int, tuple | None]:
    """(encoding, bytes, codebook parts) for the smallest encoding of `array`."""
    nonzero = int(np.count_nonzero(array))
    best = ("dense", array.nbytes, None)
    sparse = (array.size + 7) // 8 + nonzero * array.itemsize
    if sparse < best[1]:
        best = ("sparse", sparse, None)
    codebook = _codebook(array)
    if codebook is not None:
        values, _, bits, _ = codebook
        size = (array.size * bits + 7) // 8 + values.nbytes
        if size < best[1]:
            best = ("codebook", size, codebook)
    return best


def _codebook(array: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int | None] | None:
    """(codebook, index of each element, bits per index, axis) when the array holds at most
    2**MAX_CODEBOOK_BITS distinct values (axis None: one codebook), or every slice along
    its first or last axis does (one codebook row per slice: per-channel clustering)."""
    flat = array.reshape(-1)
    if flat.size < 16 or array.dtype.kind not in "fiu":
        return None
    limit = 1 << MAX_CODEBOOK_BITS
    best = None
    if np.unique(flat[:_CODEBOOK_PROBE]).size <= limit:
        values, indices = np.unique(flat, return_inverse=True)
        if values.size <= limit:
            best = (values, indices.astype(np.uint8 if values.size <= 256 else np.uint16), _bits(values.size), None)
    for axis in sorted({0, array.ndim - 1}) if array.ndim > 1 else ():
        rows = np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)
        if rows.shape[1] < 16 or np.unique(rows[0]).size > limit:
            continue
        split = [np.unique(row, return_inverse=True) for row in rows]
        width = max(values.size for values, _ in split)
        if width > limit or (best is not None and _bits(width) >= best[2]):
            continue
        codebook = np.zeros((rows.shape[0], width), dtype=array.dtype)
        for row, (values, _) in enumerate(split):
            codebook[row, : values.size] = values
        indices = np.concatenate([inverse.reshape(-1) for _, inverse in split])
        best = (codebook, indices, _bits(width), axis)
    return best


def _bits(count: int) -> int:
    return max(1, int(np.ceil(np.log2(count)))) if count > 1 else 1


def pack_indices(indices: np.ndarray, bits: int) -> np.ndarray:
    """`bits`-bit unsigned indices, most significant bit first, packed into bytes."""
    as_bits = np.unpackbits(indices.astype(np.uint8).reshape(-1, 1), axis=1)[:, 8 - bits :]
    return np.packbits(as_bits.reshape(-1))


def unpack_indices(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    as_bits = np.unpackbits(packed, count=count * bits).reshape(count, bits)
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.uint16)
    return (as_bits.astype(np.uint16) @ weights).astype(np.uint16)


def write_weights(path: Path, arrays: list[np.ndarray]) -> int:
    """Write weights in order; returns the bytes of array data written."""
    entries: dict[str, np.ndarray] = {"format": np.array(FORMAT)}
    total = 0
    for i, array in enumerate(arrays):
        array = np.ascontiguousarray(array)
        entries[f"{i}.shape"] = np.array(array.shape, dtype=np.int64)
        encoding, nbytes, codebook = _choose_encoding(array)
        if encoding == "sparse":
            entries[f"{i}.mask"] = np.packbits((array != 0).reshape(-1))
            entries[f"{i}.values"] = array.reshape(-1)[array.reshape(-1) != 0]
        elif encoding == "codebook":
            values, indices, bits, axis = codebook
            entries[f"{i}.codebook"] = values
            entries[f"{i}.indices"] = pack_indices(indices, bits)
            entries[f"{i}.bits"] = np.array(bits, dtype=np.uint8)
            if axis is not None:
                entries[f"{i}.axis"] = np.array(axis, dtype=np.int64)
        else:
            entries[f"{i}.dense"] = array
        total += nbytes
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


_KINDS = ("shape", "dense", "mask", "values", "codebook", "indices", "bits", "axis")


def _entry_count(files: list[str], where: str) -> int:
    count = sum(1 for name in files if name.endswith(".shape"))
    expected = {"format"} | {f"{i}.{kind}" for i in range(count) for kind in _KINDS}
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
    size = 1
    for d in shape:
        size *= d
    if f"{i}.codebook" in data.files:
        return _read_codebook_entry(data, i, shape, size, where)
    mask_bits = data[f"{i}.mask"]
    values = data[f"{i}.values"]
    if mask_bits.dtype != np.uint8 or size > 8 * mask_bits.size:
        raise ValueError(f"{where}: weight {i} declares {size} elements, more than its mask of {mask_bits.size} bytes holds")
    mask = np.unpackbits(mask_bits, count=size).astype(bool)
    if int(mask.sum()) != values.size:
        raise ValueError(f"{where}: weight {i} has {values.size} values for {int(mask.sum())} non-zero positions")
    dense = np.zeros(size, dtype=values.dtype)
    dense[mask] = values.reshape(-1)
    return dense.reshape(shape)


def _read_codebook_entry(data, i: int, shape: tuple, size: int, where: str) -> np.ndarray:
    values = data[f"{i}.codebook"]
    packed = data[f"{i}.indices"]
    bits = data[f"{i}.bits"]
    if bits.shape != () or bits.dtype.kind not in "iu" or not 1 <= int(bits) <= MAX_CODEBOOK_BITS:
        raise ValueError(f"{where}: weight {i} has an invalid index width {bits.tolist()} (1..{MAX_CODEBOOK_BITS} bits)")
    bits = int(bits)
    axis = data[f"{i}.axis"] if f"{i}.axis" in data.files else None
    rows = 1
    if axis is not None:
        if axis.shape != () or axis.dtype.kind not in "iu" or not 0 <= int(axis) < len(shape):
            raise ValueError(f"{where}: weight {i} has codebook axis {axis.tolist()} outside its {len(shape)} dimensions")
        axis = int(axis)
        rows = shape[axis]
    width = values.shape[-1] if values.ndim else 0
    if values.ndim != (1 if axis is None else 2) or values.dtype.kind not in "fiu" or not 0 < width <= 1 << bits \
            or (axis is not None and values.shape[0] != rows):
        raise ValueError(f"{where}: weight {i} has a codebook of shape {list(values.shape)} for {bits}-bit indices")
    if packed.dtype != np.uint8 or packed.ndim != 1 or size * bits > 8 * packed.size:
        raise ValueError(f"{where}: weight {i} declares {size} elements, more than its {packed.size} index bytes hold")
    indices = unpack_indices(packed, bits, size)
    if size and int(indices.max()) >= width:
        raise ValueError(f"{where}: weight {i} has an index past its codebook of {width} values")
    if axis is None:
        return values[indices].reshape(shape)
    moved = (shape[axis], *shape[:axis], *shape[axis + 1 :])
    row = np.repeat(np.arange(rows), size // rows if rows else 0)
    return np.moveaxis(values[row, indices].reshape(moved), 0, axis)
