"""The module-wide call rewriter the op-replacing passes share (FastMath, LayerNormRows,
PackConv2dFp32, WinogradConv2dFp32), and the count of the calls they would replace: each call, visited bottom-up in every Relax function that is not a fused
kernel, replaced by what `rewrite(builder, call)` returns (None: left as it is). The
builder lets a rewrite add kernels (call_te, add_func) to the module."""

from __future__ import annotations

from typing import Callable

from tvm import IRModule, relax

from ..analysis.layer_calls import is_primitive


def rewrite_calls(mod: IRModule, rewrite: Callable[[relax.BlockBuilder, relax.Call], "relax.Expr | None"]) -> IRModule:
    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            replaced = rewrite(self.builder_, call)
            return call if replaced is None else replaced

    rewriter = Rewriter(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function) and not is_primitive(func):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.get()


def rewrite_function_calls(
    func: relax.Function, mod: IRModule, rewrite: Callable[[relax.Call], "relax.Expr | None"]
) -> relax.Function:
    """One function with each call (visited bottom-up) replaced by what `rewrite(call)`
    returns (None: left as it is): the body of the call-rewriting function passes."""

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            replaced = rewrite(call)
            return call if replaced is None else replaced

    return Rewriter(mod).visit_expr(func)


def count_calls(mod: IRModule, matches: Callable[[relax.Expr], bool]) -> int:
    """How many calls in the module's Relax functions (fused kernels aside) `matches` accepts."""
    found = []

    def visit(expr):
        if matches(expr):
            found.append(expr)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function) and not is_primitive(func):
            relax.analysis.post_order_visit(func.body, visit)
    return len(found)


def add_kernel(builder: relax.BlockBuilder, func, name: str) -> relax.GlobalVar:
    """Add a TE-made kernel to the module under a symbol of its own: te.create_prim_func
    names every kernel "main", and two kernels left unfused under one symbol clash."""
    gv = builder.add_func(func, name)
    builder.update_func(gv, func.with_attr("global_symbol", gv.name_hint))
    return gv
