"""Low-rank factorization: one conv2d/matmul layer becomes two thinner ones.

conv2d(x, W[O, I, kh, kw]) -> conv2d(conv2d(x, Q[r, I, kh, kw]), P[O, r, 1, 1]) with the
first conv keeping the original strides, padding and dilation; matmul(x, W[K, N]) ->
matmul(matmul(x, Q^T[K, r]), P^T[r, N]). P @ Q is the truncated SVD of W viewed as
(output channels x the rest), see compression/lowrank.py. Bias adds and activations
that follow the layer are untouched (they now follow the second factor).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from tvm import IRModule, relax
from tvm.ir.transform import PassContext
from tvm.relax.transform import function_pass

from ...errors import BuildError
from ..analysis.layer_calls import is_primitive, rewrite_layer_calls
from ..compression.lowrank import as_matrix, factors, from_matrix
from .carry import carries_errors


@function_pass(opt_level=0)
class FactorizeLowRank:
    """ranks: {layer name ("conv2d_1", "matmul_0"): rank}; layers not named stay.
    covariances: {layer name: covariance of its input patches} for data-aware factors."""

    def __init__(self, ranks: Mapping[str, int], covariances: Mapping[str, np.ndarray] | None = None):
        self.ranks = {name: int(rank) for name, rank in ranks.items()}
        self.covariances = dict(covariances or {})

    @carries_errors
    def transform_function(self, func: relax.Function, mod: IRModule, ctx: PassContext) -> relax.Function:
        if is_primitive(func) or not self.ranks:
            return func

        def factorize(layer, call):
            rank = self.ranks.get(layer.name)
            if rank is None:
                return None
            weight = call.args[1].value.numpy()
            matrix = as_matrix(weight, layer.out_axis)
            if not 1 <= rank <= min(matrix.shape):
                raise BuildError(
                    f"low-rank: rank {rank} for {layer.name} is outside 1..{min(matrix.shape)} "
                    f"(its weight is {matrix.shape[0]} x {matrix.shape[1]} as a matrix)"
                )
            p, q = factors(matrix, rank, self.covariances.get(layer.name))
            if layer.op == "matmul":
                first = relax.op.matmul(call.args[0], relax.const(q.T.copy()), out_dtype=call.attrs.out_dtype)
                return relax.op.matmul(first, relax.const(p.T.copy()), out_dtype=call.attrs.out_dtype)
            return _conv_pair(call, layer, weight, p, q)

        func, names = rewrite_layer_calls(func, factorize)
        unknown = set(self.ranks) - set(names)
        if unknown:
            raise BuildError(f"low-rank: no conv2d/matmul layer named {', '.join(sorted(unknown))}")
        return func


def _conv_pair(call, layer, weight, p, q) -> relax.Expr:
    attrs = call.attrs
    rank = q.shape[0]
    reduced = list(weight.shape)
    reduced[layer.out_axis] = rank
    first_weight = from_matrix(q, tuple(reduced), layer.out_axis)
    pointwise = [1] * weight.ndim
    pointwise[layer.out_axis] = p.shape[0]
    pointwise[layer.in_axis] = rank
    second_weight = p.reshape(pointwise)  # OIHW: (O, r, 1, 1); OHWI: (O, 1, 1, r)
    common = {"data_layout": attrs.data_layout, "kernel_layout": attrs.kernel_layout, "out_dtype": attrs.out_dtype}
    first = relax.op.nn.conv2d(
        call.args[0], relax.const(first_weight.copy()), strides=attrs.strides, padding=attrs.padding,
        dilation=attrs.dilation, groups=1, **common,
    )
    return relax.op.nn.conv2d(first, relax.const(second_weight.copy()), **common)
