"""Shared by the passes that rewrite conv2d/matmul layers one call at a time."""

from __future__ import annotations

from typing import Callable

from tvm import relax

from .channels import Layer, analyze_channels, bindings_of


def is_primitive(func: relax.Function) -> bool:
    """A fused kernel's function: passes on the graph leave it alone."""
    return func.attrs is not None and "Primitive" in func.attrs.keys() and func.attrs["Primitive"] != 0


def rewrite_layer_calls(
    func: relax.Function, rewrite: Callable[[Layer, relax.Call], relax.Expr | None]
) -> tuple[relax.Function, list[str]]:
    """Replace every conv2d/matmul layer call for which rewrite(layer, call) returns an
    expression; returns the function and the names of all layers it has."""
    graph = analyze_channels(func)
    replace = {}
    for layer in graph.layers:
        call = graph.bindings[layer.slot[0]].value
        new = rewrite(layer, call)
        if new is not None:
            replace[call] = new
    return (replace_calls(func, replace) if replace else func), [layer.name for layer in graph.layers]


def replace_calls(func: relax.Function, replace: dict) -> relax.Function:
    @relax.expr_functor.mutator
    class Replacer(relax.PyExprMutator):
        def visit_call_(self, call):
            for old, new in replace.items():
                if old.same_as(call):
                    return super().visit_call_(new)
            return super().visit_call_(call)

    return Replacer().visit_expr(func)


def tap_layer_inputs(mod, graph):
    """main returning (its outputs..., every layer's input): calibration taps."""
    import tvm

    flat = relax.transform.ToNonDataflow()(mod)
    func = flat["main"]
    bindings = bindings_of(func)
    taps = [bindings[layer.slot[0]].value.args[0] for layer in graph.layers]
    result = func.body.body
    fields = list(result.fields) if isinstance(result, relax.Tuple) else [result]
    returned = [*fields, *taps]
    body = relax.SeqExpr(func.body.blocks, relax.Tuple(returned))
    new = relax.Function(func.params, body, relax.TupleType([e.ty for e in returned]), func.is_pure, func.attrs)
    out = tvm.ir.IRModule(dict(flat.functions_items()))
    out["main"] = new
    return out
