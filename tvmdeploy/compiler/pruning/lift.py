"""Turn a Relax model's weight constants into parameters of `main`.

Two uses: the pruning evaluator builds a model once and then tries many weight edits
(masks) without rebuilding, and a magnitude-pruned artifact keeps its weights outside
the library, compactly encoded (`tvmdeploy.weights_file`).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax


def lift_weights(mod: tvm.ir.IRModule, min_elements: int = 2) -> tuple[tvm.ir.IRModule, list[np.ndarray]]:
    """main(inputs) -> main(inputs, w0, w1, ...) for every constant with at least
    `min_elements` elements (scalars stay). Returns the module and the arrays in order.
    The "num_input" attribute keeps counting only the real inputs."""
    func = mod["main"]
    params: list[relax.Var] = []
    arrays: list[np.ndarray] = []

    @relax.expr_functor.mutator
    class Lifter(relax.PyExprMutator):
        def visit_generic_const_(self, const):
            array = const.value.numpy()
            if array.size < min_elements:
                return const
            var = relax.Var(f"w{len(params)}", relax.TensorType(array.shape, str(array.dtype)))
            params.append(var)
            arrays.append(array)
            return var

    lifted = Lifter().visit_expr(func)
    num_input = len(func.params)
    attrs = dict(func.attrs) if func.attrs is not None else {}
    attrs["num_input"] = num_input
    new = relax.Function([*func.params, *params], lifted.body, func.ret_ty, func.is_pure, tvm.ir.make_node("ir.DictAttrs", **attrs))
    out = mod.copy() if hasattr(mod, "copy") else tvm.ir.IRModule(dict(mod.functions_items()))
    out["main"] = new
    return out, arrays
