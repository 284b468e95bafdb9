"""How many times each bound variable of a Relax function is used: a rewrite that moves
or merges a value must leave alone one that other bindings still read."""

from __future__ import annotations

from tvm import relax


class UseCounts:
    """How many times each bound value's variable is referenced in a function."""

    def __init__(self, var_of_value: dict, counts: dict):
        self._var_of_value = var_of_value
        self._counts = counts

    def of(self, value: relax.Expr) -> int:
        var = self._var_of_value.get(value)
        # A value created by an earlier rewrite in this same pass is inlined in exactly
        # one place.
        return 1 if var is None else self._counts.get(var, 0)


def use_counts(func: relax.Function) -> UseCounts:
    var_of_value, counts = {}, {}

    @relax.expr_functor.visitor
    class Counter(relax.PyExprVisitor):
        def visit_var_binding_(self, binding):
            var_of_value[binding.value] = binding.var
            self.visit_expr(binding.value)

        def visit_var_(self, var):
            counts[var] = counts.get(var, 0) + 1

        def visit_dataflow_var_(self, var):
            counts[var] = counts.get(var, 0) + 1

    Counter().visit_expr(func)
    return UseCounts(var_of_value, counts)


def rewrite_to_fixed_point(pattern, rewrite, func: relax.Function, max_iterations: int) -> relax.Function:
    """rewrite_call(pattern) until nothing changes (at most max_iterations rounds), each
    round's rewrite(expr, matches, uses) told the use counts of the function it rewrites
    (a rewrite that moves a value shared with other bindings would compute it twice)."""
    from tvm.relax.dpl import rewrite_call

    for _ in range(max_iterations):
        uses = use_counts(func)
        rewritten = rewrite_call(pattern, lambda expr, matches: rewrite(expr, matches, uses), func)
        if rewritten.same_as(func):
            break
        func = rewritten
    return func
