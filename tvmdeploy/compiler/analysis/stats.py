"""Size and compute of a Relax model: multiply-accumulates, parameters, weight bytes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from ...runtime.weights_file import encoded_nbytes
from .channels import bindings_of, main_function, static_shape


@dataclass(frozen=True)
class ModelStats:
    macs: int  # multiply-accumulates of conv2d and matmul (FLOPs ~ 2x)
    params: int  # elements of all constants with more than one element
    nonzero_params: int
    weight_bytes: int  # dense bytes of those constants
    compact_weight_bytes: int  # bytes when zero-heavy weights are stored as mask + values

    def to_json(self) -> dict:
        return {
            "macs": self.macs, "flops": 2 * self.macs, "params": self.params, "nonzero_params": self.nonzero_params,
            "weight_bytes": self.weight_bytes, "compact_weight_bytes": self.compact_weight_bytes,
        }


def model_stats(mod) -> ModelStats:
    func = main_function(mod)
    macs = 0
    arrays: list[np.ndarray] = []

    @relax.expr_functor.visitor
    class Collect(relax.PyExprVisitor):
        def visit_generic_const_(self, const):
            array = const.value.numpy()
            if array.size > 1:
                arrays.append(array)

    Collect().visit_expr(func)
    for binding in bindings_of(func):
        call = binding.value
        if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
            continue
        if call.op.name == "relax.nn.conv2d":
            out = static_shape(binding.var)
            w = static_shape(call.args[1])
            macs += int(np.prod(out)) * int(np.prod(w[1:]))
        elif call.op.name == "relax.matmul":
            out = static_shape(binding.var)
            macs += int(np.prod(out)) * static_shape(call.args[0])[-1]
    return ModelStats(
        macs=macs,
        params=sum(a.size for a in arrays),
        nonzero_params=sum(int(np.count_nonzero(a)) for a in arrays),
        weight_bytes=sum(a.nbytes for a in arrays),
        compact_weight_bytes=sum(encoded_nbytes(a) for a in arrays),
    )


__all__ = ["ModelStats", "model_stats"]
