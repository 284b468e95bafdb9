"""Made-up inputs of the right names, shapes and dtypes: smoke tests, timing, calibration
without data. One generator for every caller, so integer inputs (token ids, indices) are
never negative and booleans are 0/1 everywhere."""

from __future__ import annotations

import numpy as np


def random_array(shape, dtype, rng: np.random.Generator, index_range=None) -> np.ndarray:
    """Standard normal floats; 0/1 booleans; integers in [0, 10) (valid ids for any
    vocabulary), within index_range (low, high) when the input indexes a smaller table."""
    dtype = np.dtype(str(dtype))
    shape = tuple(int(d) for d in shape)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(dtype)
    low, high = (0, 10) if index_range is None else (max(0, index_range[0]), min(10, index_range[1]))
    return rng.integers(low, max(high, low + 1), shape).astype(dtype)


def random_inputs(specs, seed: int = 0) -> list[np.ndarray]:
    """One array per TensorSpec (anything with .shape and .dtype), reproducible from seed."""
    rng = np.random.default_rng(seed)
    return [random_array(spec.shape, spec.dtype, rng, getattr(spec, "index_range", None)) for spec in specs]
