"""RemoveInferenceDropout: dropout(x)[0] -> x.

An inference graph's Dropout is the identity, but Relax imports it as an op returning a
(output, mask) tuple, which ConvertLayout cannot carry ("Expected nested to match
tuple": every SqueezeNet export has one before its classifier conv). The mask is never
read in inference; the output is x itself.
"""

from __future__ import annotations

from tvm import IRModule, relax
from tvm.ir.transform import PassContext
from tvm.relax.dpl import is_op, is_tuple_get_item, rewrite_call, wildcard
from tvm.relax.transform import function_pass

from ..analysis.layer_calls import is_primitive
from .carry import carries_errors


@function_pass(opt_level=0)
class RemoveInferenceDropout:
    @carries_errors
    def transform_function(self, func: relax.Function, mod: IRModule, ctx: PassContext) -> relax.Function:
        if is_primitive(func):
            return func
        x = wildcard()
        pattern = is_tuple_get_item(is_op("relax.nn.dropout")(x), 0)
        return rewrite_call(pattern, lambda _expr, matches: matches[x], func)
