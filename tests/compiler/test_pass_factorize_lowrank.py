"""FactorizeLowRank: Before/Expected structure, numerics against numpy, bad ranks."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from pass_helpers import relax_main, verify_pass
from tvm import relax

from tvmdeploy.compiler.compression.lowrank import (
    approximate,
    as_matrix,
    break_even_rank,
    factors,
    rank_grid,
)
from tvmdeploy.compiler.host_eval import HostModel
from tvmdeploy.compiler.passes.carry import apply_pass
from tvmdeploy.compiler.passes.factorize_lowrank import FactorizeLowRank
from tvmdeploy.errors import BuildError

rng = np.random.default_rng(0)
W = rng.standard_normal((16, 8, 3, 3)).astype("float32")  # OIHW
M = rng.standard_normal((64, 10)).astype("float32")  # matmul (K, N)


def _conv_then_dense(bb, x, conv_weight=None, dense_weight=None):
    y = bb.emit(relax.op.nn.conv2d(x, relax.const(W if conv_weight is None else conv_weight), strides=(2, 2), padding=(1, 1)))
    y = bb.emit(relax.op.reshape(y, (1, 64)))
    return relax.op.matmul(y, relax.const(M if dense_weight is None else dense_weight))


def _before():
    return relax_main(_conv_then_dense, (1, 8, 4, 4))


def test_conv_and_matmul_become_thin_pairs():
    p_conv, q_conv = factors(as_matrix(W, 0), 4)
    p_dense, q_dense = factors(as_matrix(M, 1), 3)

    def expected(bb, x):
        y = bb.emit(relax.op.nn.conv2d(x, relax.const(q_conv.reshape(4, 8, 3, 3)), strides=(2, 2), padding=(1, 1)))
        y = bb.emit(relax.op.nn.conv2d(y, relax.const(p_conv.reshape(16, 4, 1, 1))))
        y = bb.emit(relax.op.reshape(y, (1, 64)))
        y = bb.emit(relax.op.matmul(y, relax.const(q_dense.T.copy())))
        return relax.op.matmul(y, relax.const(p_dense.T.copy()))

    verify_pass(FactorizeLowRank({"conv2d_0": 4, "matmul_0": 3}), _before(), relax_main(expected, (1, 8, 4, 4)))


def test_the_pair_computes_what_the_rank_r_weight_computes():
    """The factorized model equals the model whose weights are numpy's rank-r SVD
    approximations (float32 rounding apart)."""
    after = FactorizeLowRank({"conv2d_0": 5, "matmul_0": 4})(_before())
    reference = relax_main(lambda bb, x: _conv_then_dense(bb, x, approximate(W, 0, 5), approximate(M, 1, 4)), (1, 8, 4, 4))
    samples = [[rng.standard_normal((1, 8, 4, 4)).astype("float32")] for _ in range(3)]
    got = HostModel(after, "test").run(samples)
    want = HostModel(reference, "test").run(samples)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g[0], w[0], rtol=1e-4, atol=1e-4)


def test_whitened_factors_are_the_best_rank_r_fit_of_the_outputs():
    """With the inputs' covariance, the rank-r pair reaches the optimum output error on that
    data (numpy: project x @ M onto its top right singular vectors), below plain SVD's."""
    x = rng.standard_normal((4000, 64)) @ np.diag(np.linspace(3.0, 0.01, 64))  # anisotropic inputs
    cov = x.T @ x / len(x)
    target = x @ M
    _, _, vt = np.linalg.svd(target, full_matrices=False)
    best = np.linalg.norm(target - target @ vt[:3].T @ vt[:3])
    plain = np.linalg.norm(target - x @ approximate(M, 1, 3))
    aware = np.linalg.norm(target - x @ approximate(M, 1, 3, cov))
    assert aware == pytest.approx(best, rel=1e-3) and aware < plain


def test_ranks_that_pay():
    assert break_even_rank(32, 144) == 26  # 26 * 176 < 32 * 144 <= 27 * 176
    assert all(r <= 26 for r in rank_grid(32, 144)) and rank_grid(32, 144)[0] == 16
    assert rank_grid(2, 3) == [1] and rank_grid(2, 2) == []  # rank 1 of 2x2 costs 4 MACs, as many as the layer


@pytest.mark.parametrize("rank", [0, 17])
def test_rank_outside_the_layer_is_one_clear_error(rank):
    with pytest.raises(BuildError, match=rf"rank {rank} for conv2d_0 is outside 1\.\.16"):
        apply_pass(FactorizeLowRank({"conv2d_0": rank}), _before())


def test_unknown_layer_is_named():
    with pytest.raises(BuildError, match="no conv2d/matmul layer named conv2d_7"):
        apply_pass(FactorizeLowRank({"conv2d_7": 2}), _before())


def test_unnamed_layers_stay():
    after = FactorizeLowRank({})(_before())
    tvm.ir.assert_structural_equal(after, _before())
