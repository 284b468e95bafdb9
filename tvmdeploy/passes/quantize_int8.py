"""int8 quantization of conv2d / matmul layers with constant weights.

QuantizeWeightsInt8 (weight-only): W -> decode(Wq) = float(Wq) * scale, with Wq int8 and
one symmetric scale per output channel. The int8 constant is what the library stores (4x
smaller); FuseDecodeIntoConsumer then groups the decode with its conv/matmul so the two
become one kernel that reads int8 weights (FoldConstant cannot fold the decode back into
a float constant once it sits inside that kernel).

QuantizeLayersInt8 (static): conv2d(x, W) -> dequant(conv2d(quant(x), Wq, out_dtype=int32)),
with x's scale calibrated per tensor. The int32 accumulator is rescaled by s_x * s_w per
channel; FuseOps puts that rescale, the float bias, the activation and the next layer's
quantize into the conv's epilogue, so tensors between layers travel as int8.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
from tvm import IRModule, relax
from tvm.ir.transform import PassContext
from tvm.relax.dpl import is_op, wildcard
from tvm.relax.transform import function_pass

from .layer_calls import is_primitive, rewrite_layer_calls


def quantize_weight(weight: np.ndarray, out_axis: int, per_channel: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8: (Wq int8, scale float32 broadcastable against W)."""
    moved = np.moveaxis(weight, out_axis, 0).reshape(weight.shape[out_axis], -1)
    peak = np.abs(moved).max(axis=1) if per_channel else np.full(moved.shape[0], np.abs(moved).max())
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    shape = [1] * weight.ndim
    shape[out_axis] = weight.shape[out_axis]
    scale = scale.reshape(shape)
    quantized = np.clip(np.round(weight / scale), -127, 127).astype(np.int8)
    return quantized, scale


def _decode(quantized: np.ndarray, scale: np.ndarray) -> relax.Expr:
    return relax.op.multiply(relax.op.astype(relax.const(quantized), "float32"), relax.const(scale))


@function_pass(opt_level=0)
class QuantizeWeightsInt8:
    """layers: names ("conv2d_0", "matmul_1"...) to quantize; None: every conv2d/matmul."""

    def __init__(self, layers: Iterable[str] | None = None, per_channel: bool = True):
        self.layers = None if layers is None else set(layers)
        self.per_channel = per_channel

    def transform_function(self, func: relax.Function, mod: IRModule, ctx: PassContext) -> relax.Function:
        if is_primitive(func):
            return func

        def quantize(layer, call):
            weight = call.args[1].value.numpy()
            if (self.layers is not None and layer.name not in self.layers) or weight.dtype != np.float32:
                return None
            quantized, scale = quantize_weight(weight, layer.out_axis, self.per_channel)
            return relax.Call(call.op, [call.args[0], _decode(quantized, scale), *call.args[2:]], call.attrs)

        return rewrite_layer_calls(func, quantize)[0]


def FuseDecodeIntoConsumer():  # noqa: N802 - a pass constructor, named like TVM's
    """Group float(int8 const) * scale with the conv2d/matmul that reads it into one kernel."""
    decode = is_op("relax.multiply")(is_op("relax.astype")(wildcard()), wildcard())
    patterns = [
        ("tvmdeploy.decode_conv2d", is_op("relax.nn.conv2d")(wildcard(), decode)),
        ("tvmdeploy.decode_matmul", is_op("relax.matmul")(wildcard(), decode)),
    ]
    return relax.transform.FuseOpsByPattern(patterns, bind_constants=False, annotate_codegen=False)


@function_pass(opt_level=0)
class QuantizeLayersInt8:
    """input_scales: {layer name: activation scale}; those layers compute int8 x int8 -> int32."""

    def __init__(self, input_scales: Mapping[str, float], per_channel: bool = True):
        self.input_scales = dict(input_scales)
        self.per_channel = per_channel

    def transform_function(self, func: relax.Function, mod: IRModule, ctx: PassContext) -> relax.Function:
        if is_primitive(func):
            return func
        return rewrite_layer_calls(func, self._int8_call)[0]

    def _int8_call(self, layer, call):
        s_x = self.input_scales.get(layer.name)
        if s_x is None:
            return None
        weight = call.args[1].value.numpy()
        quantized, s_w = quantize_weight(weight, layer.out_axis, self.per_channel)
        x = relax.op.astype(
            relax.op.clip(relax.op.round(relax.op.divide(call.args[0], relax.const(np.float32(s_x)))), -128, 127),
            "int8",
        )
        if layer.op == "conv2d":
            a = call.attrs
            acc = relax.op.nn.conv2d(
                x, relax.const(quantized), strides=a.strides, padding=a.padding, dilation=a.dilation,
                groups=a.groups, data_layout=a.data_layout, kernel_layout=a.kernel_layout,
                out_layout=a.out_layout or None, out_dtype="int32",
            )
            rescale = (s_x * s_w).reshape(1, -1, 1, 1)
        else:
            acc = relax.op.matmul(x, relax.const(quantized), out_dtype="int32")
            rescale = (s_x * s_w).reshape(-1)
        return relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(rescale.astype(np.float32)))
