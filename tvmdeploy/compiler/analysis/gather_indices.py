"""Which integer inputs of a model index a table (a Gather: token ids into an embedding),
and the values each may hold: the manifest records them and the loader refuses an input
outside them with one line, as ONNX Runtime does, instead of running on clamped ids.

An input indexes a table when a `take` (or an ONNX GatherElements / ScatterElements,
which count -n .. -1 from the end) reads the table at it, directly or through a cast, a
reshape, or the ONNX importer's wrap of negative indices (`where(x < 0, x + n, x)`: then
-n .. -1 are accepted too). GatherND's indices hold one column per axis, each with its own
range: they are only clamped (passes/clamp_gather_indices.py).
"""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.ir import Op

from .._tvm import RelaxConstant
from .channels import static_shape

TAKE = Op.get("relax.take")
ALONG_AXIS = (Op.get("relax.gather_elements"), Op.get("relax.scatter_elements"))
WHERE = Op.get("relax.where")
LESS = Op.get("relax.less")
ADD = Op.get("relax.add")
# Ops that pass index values through unchanged.
SAME_VALUES = frozenset(
    Op.get(f"relax.{name}") for name in ("astype", "reshape", "expand_dims", "squeeze", "flatten", "permute_dims")
)


def index_ranges(func: relax.Function) -> dict[int, tuple[int, int]]:
    """{position of a parameter of `func`: [low, high) of the values it may hold}, for the
    parameters that index a table; several tables: the narrowest range."""
    bound = relax.analysis.get_var2val(func)
    params = {param: i for i, param in enumerate(func.params)}
    ranges: dict[int, tuple[int, int]] = {}

    def visit(expr):
        if not isinstance(expr, relax.Call):
            return
        if expr.op.same_as(TAKE):
            counts_from_end = False
        elif any(expr.op.same_as(op) for op in ALONG_AXIS):
            counts_from_end = True  # ONNX GatherElements / ScatterElements: -n .. -1 count from the end
        else:
            return
        table, indices = expr.args[:2]
        rows = _rows(table, expr.attrs.axis)
        found = _source(indices, bound, params)
        if rows is None or found is None:
            return
        position, wraps_negative = found
        low, high = (-rows if wraps_negative or counts_from_end else 0), rows
        old = ranges.get(position, (low, high))
        ranges[position] = (max(low, old[0]), min(high, old[1]))

    relax.analysis.post_order_visit(func.body, visit)
    return ranges


def _rows(table: relax.Expr, axis) -> int | None:
    shape = static_shape(table)
    if shape is None:
        return None
    if axis is None:  # take over the flattened table
        return int(np.prod(shape, dtype=np.int64))
    axis = int(axis)
    return shape[axis] if -len(shape) <= axis < len(shape) else None


def _source(expr: relax.Expr, bound: dict, params: dict) -> tuple[int, bool] | None:
    """(the parameter's position, whether negative indices wrap) when `expr` holds that
    parameter's values, else None."""
    wraps = False
    for _ in range(64):  # a chain of value-preserving ops, never a cycle
        if expr in params:
            return params[expr], wraps
        value = bound.get(expr) if isinstance(expr, relax.Var) else None
        if not isinstance(value, relax.Call):
            return None
        if any(value.op.same_as(op) for op in SAME_VALUES):
            expr = value.args[0]
        elif value.op.same_as(WHERE) and _wraps_negative(value, bound):
            expr, wraps = value.args[2], True
        else:
            return None
    return None


def _wraps_negative(where: relax.Call, bound: dict) -> bool:
    """where(x < 0, x + n, x): the ONNX importer's wrap of negative indices."""
    cond, shifted, x = (bound.get(a, a) if isinstance(a, relax.Var) else a for a in where.args)
    x = where.args[2]
    return (
        isinstance(cond, relax.Call) and cond.op.same_as(LESS) and cond.args[0].same_as(x)
        and _is_zero(cond.args[1])
        and isinstance(shifted, relax.Call) and shifted.op.same_as(ADD) and shifted.args[0].same_as(x)
    )


def _is_zero(expr: relax.Expr) -> bool:
    return isinstance(expr, RelaxConstant) and expr.value.numpy().size == 1 and int(expr.value.numpy().item()) == 0
