"""ChannelShuffleNHWC: a channel shuffle that ConvertLayout left in NCHW, done in NHWC.

ShuffleNet's channel shuffle is reshape [N, G, C/G, H, W] -> transpose(1, 2) -> reshape
[N, C, H, W]. ConvertLayout cannot carry a reshape of the channel axis, so after the
graph moved to NHWC it reads

    permute(x, NHWC->NCHW), reshape [N,G,C/G,H,W], permute(0,2,1,3,4), reshape [N,C,H,W],
    permute(NCHW->NHWC)

three full transposes of the tensor in one gather kernel (a sixth of light ShuffleNet's
time). The same shuffle on the NHWC tensor touches only the channel axis, as a gather of
channels by a constant index (output channel i*G + g reads channel g*C/G + i):

    take(x, [0, C/G, 2C/G, ..., 1, C/G + 1, ...], axis=C)

(as reshape/permute/reshape on NHWC its indices went through div/mod chains of the whole
flattened tensor, and a 56x56x112 shuffle took 300 us; the gather takes 6-10 us.)
"""

from __future__ import annotations

import numpy as np
from tvm import IRModule, relax
from tvm.ir.transform import PassContext
from tvm.relax.dpl import is_op, rewrite_call, wildcard
from tvm.relax.transform import function_pass

from ..analysis.channels import static_shape
from ..analysis.layer_calls import is_primitive
from .carry import carries_errors

TO_NCHW, TO_NHWC, SWAP_GROUPS = [0, 3, 1, 2], [0, 2, 3, 1], [0, 2, 1, 3, 4]


def _axes(call) -> list[int]:
    return [int(a) for a in call.attrs.axes] if call.attrs.axes is not None else []


@function_pass(opt_level=0)
class ChannelShuffleNHWC:
    @carries_errors
    def transform_function(self, func: relax.Function, mod: IRModule, ctx: PassContext) -> relax.Function:
        if is_primitive(func):
            return func
        x = wildcard()
        to_nchw = is_op("relax.permute_dims")(x)
        split = is_op("relax.reshape")(to_nchw, wildcard())
        swap = is_op("relax.permute_dims")(split)
        merge = is_op("relax.reshape")(swap, wildcard())
        pattern = is_op("relax.permute_dims")(merge)

        def rewrite(expr, m):
            shape, grouped = static_shape(m[x]), static_shape(m[split])
            if shape is None or grouped is None or len(shape) != 4 or len(grouped) != 5:
                return expr
            n, h, w, c = shape
            if (
                _axes(m[to_nchw]) != TO_NCHW or _axes(m[swap]) != SWAP_GROUPS or _axes(expr) != TO_NHWC
                or grouped[0] != n or grouped[3:] != (h, w) or grouped[1] * grouped[2] != c
                or static_shape(expr) != (n, h, w, c)
            ):
                return expr
            groups, per_group = grouped[1], grouped[2]
            source = np.array([g * per_group + i for i in range(per_group) for g in range(groups)], dtype="int32")
            return relax.op.take(m[x], relax.const(source), axis=3, mode="clip")

        return rewrite_call(pattern, rewrite, func)
