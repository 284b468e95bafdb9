"""Magnitude (unstructured) pruning: zero the smallest weights of conv2d/matmul layers.

Shapes do not change, so this buys nothing at run time by itself; it pays off in the
artifact, where zero-heavy weights are stored compactly (`tvmdeploy.weights_file`).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from tvm import IRModule, relax
from tvm.ir.transform import PassContext
from tvm.relax.transform import function_pass

from ...errors import BuildError
from ..analysis.layer_calls import is_primitive, rewrite_layer_calls
from .carry import carries_errors


def magnitude_masks(
    weights: Mapping[str, np.ndarray], ratio: float | Mapping[str, float] | None = None,
    scope: str = "global", alpha: float | None = None,
) -> dict[str, np.ndarray]:
    """Boolean keep-masks per layer. ratio: the fraction of weights to zero, over all
    layers at once (scope "global") or in every layer ("layer"), or a {layer: ratio}
    mapping. alpha: zero |w| < alpha * mean|W| per layer instead."""
    if alpha is not None:
        return {name: np.abs(w) >= alpha * np.abs(w).mean() for name, w in weights.items()}
    if isinstance(ratio, Mapping):
        return {name: _keep_largest(np.abs(w), ratio.get(name, 0.0)) for name, w in weights.items()}
    if scope == "layer":
        return {name: _keep_largest(np.abs(w), ratio) for name, w in weights.items()}
    if scope != "global":
        raise BuildError(f"magnitude pruning: scope must be 'global' or 'layer', not {scope!r}")
    everything = np.concatenate([np.abs(w).reshape(-1) for w in weights.values()])
    k = int(round(ratio * everything.size))
    if k == 0:
        return {name: np.ones(w.shape, bool) for name, w in weights.items()}
    threshold = np.partition(everything, k - 1)[k - 1]
    return {name: np.abs(w) > threshold for name, w in weights.items()}


def _keep_largest(magnitude: np.ndarray, ratio: float) -> np.ndarray:
    k = int(round(ratio * magnitude.size))
    keep = np.ones(magnitude.shape, bool)
    if k > 0:
        order = np.argsort(magnitude, axis=None, kind="stable")[:k]
        keep.reshape(-1)[order] = False
    return keep


@function_pass(opt_level=0)
class PruneMagnitude:
    """Zero conv2d/matmul weights. masks: {layer name: boolean keep-mask}; layers not
    named are left alone (`magnitude_masks` computes masks from a ratio)."""

    def __init__(self, masks: Mapping[str, np.ndarray]):
        self.masks = dict(masks)

    @carries_errors
    def transform_function(self, func: relax.Function, mod: IRModule, ctx: PassContext) -> relax.Function:
        if is_primitive(func):
            return func

        def zero(layer, call):
            mask = self.masks.get(layer.name)
            if mask is None:
                return None
            weight = call.args[layer.slot[1]].value.numpy()
            if mask.shape != weight.shape:
                raise BuildError(f"magnitude pruning: mask for {layer.name} has shape {mask.shape}, weight {weight.shape}")
            pruned = relax.const(np.where(mask, weight, 0).astype(weight.dtype))
            return relax.Call(call.op, [call.args[0], pruned, *call.args[2:]], call.attrs)

        func, names = rewrite_layer_calls(func, zero)
        unknown = set(self.masks) - set(names)
        if unknown:
            raise BuildError(f"magnitude pruning: no conv2d/matmul layer named {', '.join(sorted(unknown))}")
        return func
