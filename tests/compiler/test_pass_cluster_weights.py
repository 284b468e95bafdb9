"""ClusterWeights and its k-means: Before/Expected, against a numpy reference, bad bits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from pass_helpers import relax_main, verify_pass
from tvm import relax

from tvmdeploy.compiler.compression.cluster import cluster_weight, kmeans_1d, snap
from tvmdeploy.compiler.passes.carry import apply_pass
from tvmdeploy.compiler.passes.cluster_weights import ClusterWeights
from tvmdeploy.errors import BuildError

rng = np.random.default_rng(0)
W = rng.standard_normal((16, 8, 3, 3)).astype("float32")


def _model(weight):
    return relax_main(lambda bb, x: relax.op.nn.conv2d(x, relax.const(weight), padding=(1, 1)), (1, 8, 6, 6))


@pytest.mark.parametrize("per_channel", [False, True])
def test_weight_is_replaced_by_its_clustered_copy(per_channel):
    verify_pass(ClusterWeights({"conv2d_0": 3}, per_channel), _model(W), _model(cluster_weight(W, 3, 0, per_channel)))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_kmeans_against_a_plain_numpy_lloyd(bits):
    """As good a fit as a straightforward 200-step Lloyd's iteration from the same start; at most
    2**bits shared values; every value snapped to its nearest centroid."""
    values = rng.standard_normal(3000)
    k = 1 << bits
    centroids = kmeans_1d(values, k)
    ref = np.quantile(np.sort(values), (np.arange(k) + 0.5) / k)
    for _ in range(200):
        assign = np.argmin(np.abs(values[:, None] - ref[None, :]), axis=1)
        ref = np.array([values[assign == j].mean() for j in range(len(ref)) if np.any(assign == j)])
    snapped = snap(values, centroids)
    ref_snapped = ref[np.argmin(np.abs(values[:, None] - ref[None, :]), axis=1)]
    assert np.sum((values - snapped) ** 2) <= 1.01 * np.sum((values - ref_snapped) ** 2)
    assert np.unique(snapped).size <= k
    nearest = centroids[np.argmin(np.abs(values[:, None] - centroids[None, :]), axis=1)]
    np.testing.assert_array_equal(snapped, nearest)


def test_more_bits_less_error():
    errors = [np.linalg.norm(W - cluster_weight(W, bits, 0)) for bits in (2, 3, 4, 6)]
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    assert np.unique(cluster_weight(W, 4, 0, per_channel=True)[5]).size <= 16


def test_bits_out_of_range_and_unknown_layer_are_errors():
    with pytest.raises(BuildError, match="12 bits for conv2d_0; use 2..8"):
        apply_pass(ClusterWeights({"conv2d_0": 12}), _model(W))
    with pytest.raises(BuildError, match="no conv2d/matmul layer named matmul_3"):
        apply_pass(ClusterWeights({"matmul_3": 4}), _model(W))
