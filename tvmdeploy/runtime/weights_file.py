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


def read_weights(path: Path) -> list[np.ndarray]:
    """The dense weight arrays, in order."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, io.UnsupportedOperation) as e:
        raise ValueError(f"{path}: not a readable weights file ({e})") from e
    with data:
        if "format" not in data.files or str(data["format"]) != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} weights file")
        count = sum(1 for name in data.files if name.endswith(".shape"))
        arrays = []
        for i in range(count):
            shape = tuple(int(d) for d in data[f"{i}.shape"])
            if f"{i}.dense" in data.files:
                arrays.append(data[f"{i}.dense"])
                continue
            values = data[f"{i}.values"]
            size = int(np.prod(shape))
            mask = np.unpackbits(data[f"{i}.mask"], count=size).astype(bool)
            dense = np.zeros(size, dtype=values.dtype)
            dense[mask] = values
            arrays.append(dense.reshape(shape))
    return arrays
