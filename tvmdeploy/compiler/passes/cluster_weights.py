"""Weight sharing: each named layer's weight snapped to 2**bits shared values (k-means).

Shapes and ops do not change; the artifact stores the clustered weights as bits-bit
indices plus a codebook (runtime/weights_file.py), a quarter of int8's bytes at 2 bits.
"""

from __future__ import annotations

from collections.abc import Mapping

from tvm import IRModule, relax
from tvm.ir.transform import PassContext
from tvm.relax.transform import function_pass

from ...errors import BuildError
from ..analysis.layer_calls import is_primitive, rewrite_layer_calls
from ..compression.cluster import cluster_weight
from .carry import carries_errors


@function_pass(opt_level=0)
class ClusterWeights:
    """bits: {layer name: bits (2..8)}; per_channel: one codebook per output channel."""

    def __init__(self, bits: Mapping[str, int], per_channel: bool = False):
        self.bits = {name: int(b) for name, b in bits.items()}
        self.per_channel = per_channel

    @carries_errors
    def transform_function(self, func: relax.Function, mod: IRModule, ctx: PassContext) -> relax.Function:
        if is_primitive(func) or not self.bits:
            return func

        def share(layer, call):
            bits = self.bits.get(layer.name)
            if bits is None:
                return None
            if not 1 <= bits <= 8:
                raise BuildError(f"clustering: {bits} bits for {layer.name}; use 2..8")
            weight = call.args[1].value.numpy()
            clustered = cluster_weight(weight, bits, layer.out_axis, self.per_channel)
            return relax.Call(call.op, [call.args[0], relax.const(clustered), *call.args[2:]], call.attrs)

        func, names = rewrite_layer_calls(func, share)
        unknown = set(self.bits) - set(names)
        if unknown:
            raise BuildError(f"clustering: no conv2d/matmul layer named {', '.join(sorted(unknown))}")
        return func
