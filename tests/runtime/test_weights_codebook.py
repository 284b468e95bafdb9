"""The weights file's codebook encoding (clustered weights): round trips, sizes, and
hostile files refused with one line before anything large is allocated."""

from __future__ import annotations

import numpy as np
import pytest

from tvmdeploy.runtime.weights_file import (
    encoded_nbytes,
    pack_indices,
    read_weights,
    unpack_indices,
    write_weights,
)

rng = np.random.default_rng(0)
SHARED = rng.standard_normal(16).astype(np.float32)


def _clustered(shape, k=16):
    return SHARED[:k][rng.integers(0, k, shape)]


@pytest.mark.parametrize("bits", range(1, 9))
def test_index_packing_round_trips(bits):
    indices = rng.integers(0, 1 << bits, 1001)
    packed = pack_indices(indices, bits)
    assert packed.size == (1001 * bits + 7) // 8
    np.testing.assert_array_equal(unpack_indices(packed, bits, 1001), indices)


def test_clustered_float_int8_and_per_channel_weights_round_trip_and_shrink(tmp_path):
    per_row = np.stack([rng.standard_normal(16).astype(np.float32)[rng.integers(0, 16, 288)] for _ in range(64)])
    arrays = [
        _clustered((64, 32, 3, 3)),  # one codebook: 4-bit indices
        per_row.reshape(64, 32, 3, 3),  # a codebook per output channel (axis 0)
        per_row.T.copy(),  # ... or per column (matmul weights are (K, N))
        (_clustered((50, 40), k=8) * 10).astype(np.int8),  # int8 with 8 shared values: 3 bits
        rng.standard_normal((30, 20)).astype(np.float32),  # not clustered: dense
    ]
    path = tmp_path / "w.npz"
    write_weights(path, arrays)
    for want, got in zip(arrays, read_weights(path)):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert encoded_nbytes(arrays[0]) == 64 * 288 // 2 + 16 * 4  # an eighth of float32, plus the codebook
    assert encoded_nbytes(arrays[1]) < arrays[1].nbytes / 5
    assert encoded_nbytes(arrays[2]) < arrays[2].nbytes / 5
    assert encoded_nbytes(arrays[3]) == (2000 * 3 + 7) // 8 + np.unique(arrays[3]).size
    assert encoded_nbytes(arrays[4]) == arrays[4].nbytes


def _write(path, **entries):
    np.savez(path, format=np.array("tvmdeploy-weights/1"), **entries)


@pytest.mark.parametrize(
    "entries, message",
    [
        ({"0.bits": np.array(9, np.uint8)}, "invalid index width"),
        ({"0.bits": np.array(0, np.uint8)}, "invalid index width"),
        ({"0.codebook": np.zeros(17, np.float32)}, "codebook of shape"),
        ({"0.shape": np.array([1 << 20, 1 << 20])}, "more than its"),
        ({"0.indices": np.full(8, 0xFF, np.uint8)}, "index past its codebook"),
        ({"0.axis": np.array(5)}, "codebook axis"),
        ({"0.codebook": np.zeros(4, dtype=object)}, "object"),
    ],
)
def test_hostile_codebook_entries_are_one_line_errors(tmp_path, entries, message):
    good = {
        "0.shape": np.array([4, 4]), "0.codebook": np.arange(3, dtype=np.float32),
        "0.indices": np.zeros(4, np.uint8), "0.bits": np.array(2, np.uint8),
    }
    path = tmp_path / "w.npz"
    _write(path, **{**good, **entries})
    with pytest.raises(ValueError, match=message) as error:
        read_weights(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)
