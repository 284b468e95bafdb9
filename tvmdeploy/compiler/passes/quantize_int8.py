"""int8 quantization of conv2d / matmul layers with constant weights.

QuantizeWeightsInt8 (weight-only): W -> decode(Wq) = float(Wq) * scale, with Wq int8 and
one symmetric scale per output channel. The int8 constant is what the library stores (4x
smaller); FuseDecodeIntoConsumer then groups the decode with its conv/matmul so the two
become one kernel that reads int8 weights (FoldConstant cannot fold the decode back into
a float constant once it sits inside that kernel).

QuantizeLayersInt8 (static): conv2d(x, W) -> dequant(conv2d(quant(x), Wq, out_dtype=int32)),
with x's scale calibrated per tensor. The int32 accumulator is rescaled by s_x * s_w per
channel; FuseOps puts that rescale, the float bias, the activation and the next layer's
quantize into the conv's epilogue, so tensors between layers travel as int8. Matmul layers
named `per_token` get one scale per row (token) instead, computed at run time
(max|x_row| / 127), and their accumulator is rescaled by row scale x per-channel s_w.

SmoothLayerInputs (SmoothQuant): matmul(x, W) -> matmul(x * (1/s), diag(s) W), one factor
per input channel, so activation outlier channels are divided down before the int8
quantize (the multiply fuses into it) and the weights, which quantize per output channel,
carry them instead.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
from tvm import IRModule, relax
from tvm.ir import GenericConst
from tvm.ir.transform import PassContext, module_pass
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard
from tvm.relax.transform import function_pass

from ..analysis.channels import static_shape
from ..analysis.layer_calls import is_primitive, rewrite_layer_calls
from ..kernels.int8_packed import (
    PackedInt8,
    conv2d_eligible,
    conv2d_nhwc_packed,
    dense_eligible,
    dense_packed,
    pack_conv2d_weight,
    pack_dense_weight,
    zero_point_correction,
)
from .carry import carries_errors


def quantize_weight(
    weight: np.ndarray, out_axis: int, per_channel: bool = True, weight_max: int = 127
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 in [-weight_max, weight_max]: (Wq int8, scale float32 broadcastable against W).

    A clustered weight (a few shared values, compression/cluster.py) gets one scale for
    the whole tensor, so its int8 values stay shared too and the weights file keeps
    storing them as short indices into a codebook."""
    if per_channel and _is_clustered(weight):
        per_channel = False
    moved = np.moveaxis(weight, out_axis, 0).reshape(weight.shape[out_axis], -1)
    peak = np.abs(moved).max(axis=1) if per_channel else np.full(moved.shape[0], np.abs(moved).max())
    scale = np.where(peak > 0, peak / float(weight_max), 1.0).astype(np.float32)
    shape = [1] * weight.ndim
    shape[out_axis] = weight.shape[out_axis]
    scale = scale.reshape(shape)
    quantized = np.clip(np.round(weight / scale), -weight_max, weight_max).astype(np.int8)
    return quantized, scale


def _is_clustered(weight: np.ndarray) -> bool:
    """At most 256 distinct values, each used 8 times or more on average: no trained
    float weight looks like that unless it was clustered."""
    flat = weight.reshape(-1)
    if flat.size < 2048 or np.unique(flat[:4096]).size > 256:
        return False
    distinct = np.unique(flat).size
    return distinct <= 256 and flat.size >= 8 * distinct


def _decode(quantized: np.ndarray, scale: np.ndarray) -> relax.Expr:
    return relax.op.multiply(relax.op.astype(relax.const(quantized), "float32"), relax.const(scale))


@function_pass(opt_level=0)
class QuantizeWeightsInt8:
    """layers: names ("conv2d_0", "matmul_1"...) to quantize; None: every conv2d/matmul."""

    def __init__(self, layers: Iterable[str] | None = None, per_channel: bool = True):
        self.layers = None if layers is None else set(layers)
        self.per_channel = per_channel

    @carries_errors
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
class SmoothLayerInputs:
    """factors: {layer name: s, one float per input channel}; those matmul layers compute
    matmul(x * (1/s), diag(s) W), the same product in exact arithmetic."""

    def __init__(self, factors: Mapping[str, np.ndarray]):
        self.factors = {name: np.asarray(s, dtype=np.float64).reshape(-1) for name, s in factors.items()}

    @carries_errors
    def transform_function(self, func: relax.Function, mod: IRModule, ctx: PassContext) -> relax.Function:
        if is_primitive(func):
            return func

        def smooth(layer, call):
            s = self.factors.get(layer.name)
            weight = call.args[1].value.numpy()
            if s is None or layer.op != "matmul" or weight.dtype != np.float32 or s.shape != (weight.shape[0],):
                return None
            x = relax.op.multiply(call.args[0], relax.const((1.0 / s).astype(np.float32)))
            w = relax.const((weight.astype(np.float64) * s[:, None]).astype(np.float32))
            return relax.Call(call.op, [x, w, *call.args[2:]], call.attrs)

        return rewrite_layer_calls(func, smooth)[0]


def smoothing_factors(x_peak: np.ndarray, weight: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's s_j = max|x_j|^alpha / max|W_j|^(1 - alpha) per input channel j of a
    [K, N] weight (1 where a channel is all zero on either side)."""
    w_peak = np.abs(weight).max(axis=1).astype(np.float64)
    x_peak = np.asarray(x_peak, dtype=np.float64)
    live = (x_peak > 0) & (w_peak > 0)
    s = np.ones_like(x_peak)
    s[live] = x_peak[live] ** alpha / w_peak[live] ** (1.0 - alpha)
    return np.clip(s, 1e-5, 1e5)


PACKED_SUFFIX = "int8_packed"  # the packed kernels' names: <layer>_int8_packed


@module_pass(opt_level=0)
class QuantizeLayersInt8:
    """input_scales: {layer name: activation scale}; those layers compute int8 x int8 -> int32.

    packed: where the target has an int8 dot-product instruction (kernels.select), layers
    in its layout (NHWC conv2d with OHWI weights, dense) whose output channels are a
    multiple of its lanes run the packed kernels of kernels.int8_packed instead: weights
    packed here once; on x86 activations stored as q + 128, the +128 taken back by a
    per-channel int32 constant; weights within the instruction's range (63 where it sums
    u8 x s8 pairs in int16, vpmaddubsw, which saturates beyond that).
    """

    def __init__(
        self, input_scales: Mapping[str, float], per_channel: bool = True, packed: PackedInt8 | None = None,
        weight_max: int | None = None, asymmetric: Mapping[str, tuple[float, int, str]] | None = None,
        per_token: Iterable[str] = (),
    ):
        self.input_scales = dict(input_scales)
        # Matmul layers whose input gets one scale per row at run time (no calibrated scale needed).
        self.per_token = set(per_token)
        # {layer: (scale, zero point, "int8"/"uint8")} of a pre-quantized model's activations:
        # where the kernel can honour a zero point (packed kernels pad with it; matmul has no
        # padding), the layer reads exactly the model's int8 values instead of a symmetric
        # re-quantization (which would lose a bit on post-ReLU tensors).
        self.asymmetric = dict(asymmetric or {})
        self.per_channel = per_channel
        self.packed = packed
        # Default: what the packed kernels' instruction allows (127 without them).
        self.weight_max = weight_max or (packed.weight_max if packed is not None else 127)

    @carries_errors
    def transform_module(self, mod: IRModule, ctx: PassContext) -> IRModule:
        kernels = relax.BlockBuilder()  # gives the new kernels' GlobalVars their types
        functions = {}
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function) and not is_primitive(func):
                func = rewrite_layer_calls(func, lambda layer, call: self._int8_call(layer, call, kernels))[0]
            functions[gv] = func
        out = IRModule(functions, attrs=mod.attrs)
        for gv, prim in kernels.get().functions_items():
            out[gv] = prim
        return relax.transform.Normalize()(out)

    def _int8_call(self, layer, call, kernels):
        per_token = layer.name in self.per_token and layer.op == "matmul"
        s_x = self.input_scales.get(layer.name)
        if s_x is None and not per_token:
            return None
        weight = call.args[1].value.numpy()
        quantized, s_w = quantize_weight(weight, layer.out_axis, self.per_channel, self.weight_max)
        spec = self.packed if self.packed is not None and self._packable(layer, call, self.packed.lanes) else None
        asymmetric = self.asymmetric.get(layer.name)
        if per_token:
            row_scale = per_row_scale(call.args[0])
            acc = self._symmetric_call(layer, call, row_scale, quantized, kernels, spec)
            rescaled = relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(s_w.reshape(-1).astype(np.float32)))
            return relax.op.multiply(rescaled, row_scale)
        if asymmetric is not None and (spec is not None or layer.op != "conv2d"):
            s_x, acc = self._asymmetric_call(layer, call, quantized, kernels, spec, *asymmetric)
        else:
            acc = self._symmetric_call(layer, call, relax.const(np.float32(s_x)), quantized, kernels, spec)
        rescale = (s_x * s_w).reshape(-1)
        if layer.op == "conv2d" and layer.data_axis == 1:
            rescale = rescale.reshape(1, -1, 1, 1)
        return relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(rescale.astype(np.float32)))

    def _asymmetric_call(self, layer, call, quantized, kernels, spec, scale, zero_point, model_dtype):
        """(scale, int32 accumulator) with the activation stored as round(x / scale) + its zero
        point, shifted into the kernel's storage type; the zero point's share of the sum is
        taken back per output channel, and conv padding uses the stored zero."""
        storage = spec.activation if spec is not None else "int8"
        offset = {("int8", "uint8"): 128, ("uint8", "uint8"): 0, ("int8", "int8"): 0, ("uint8", "int8"): -128}[
            (model_dtype, storage)
        ]
        zero = int(zero_point) + offset
        low, high = (0, 255) if storage == "uint8" else (-128, 127)
        scaled = relax.op.round(relax.op.divide(call.args[0], relax.const(np.float32(scale))))
        x = relax.op.astype(relax.op.clip(relax.op.add(scaled, relax.const(np.float32(zero))), low, high), storage)
        if spec is not None:
            acc = self._packed_call(layer, call, x, quantized, kernels, spec, zero)
        else:
            acc = relax.op.matmul(x, relax.const(quantized), out_dtype="int32")
        if zero:
            acc = relax.op.add(acc, relax.const(zero_point_correction(quantized, layer.out_axis, zero)))
        return scale, acc

    def _symmetric_call(self, layer, call, s_x: relax.Expr, quantized, kernels, spec):
        """s_x: the activation scale, a float32 constant (per tensor) or a [..., 1] tensor (per row)."""
        scaled = relax.op.round(relax.op.divide(call.args[0], s_x))
        if spec is not None and spec.activation == "uint8":
            x = relax.op.astype(relax.op.clip(relax.op.add(scaled, relax.const(np.float32(spec.zero_point))), 0, 255), "uint8")
            acc = self._packed_call(layer, call, x, quantized, kernels, spec)
            acc = relax.op.add(acc, relax.const(zero_point_correction(quantized, layer.out_axis, spec.zero_point)))
        elif spec is not None:
            x = relax.op.astype(relax.op.clip(scaled, -128, 127), "int8")
            acc = self._packed_call(layer, call, x, quantized, kernels, spec)
        else:
            x = relax.op.astype(relax.op.clip(scaled, -128, 127), "int8")
            if layer.op == "conv2d":
                a = call.attrs
                acc = relax.op.nn.conv2d(
                    x, relax.const(quantized), strides=a.strides, padding=a.padding, dilation=a.dilation,
                    groups=a.groups, data_layout=a.data_layout, kernel_layout=a.kernel_layout,
                    out_layout=a.out_layout or None, out_dtype="int32",
                )
            else:
                acc = relax.op.matmul(x, relax.const(quantized), out_dtype="int32")
        return acc

    @staticmethod
    def _packable(layer, call, lanes: int) -> bool:
        x_shape = static_shape(call.args[0])
        if x_shape is None:
            return False
        if layer.op == "conv2d":
            return layer.layout == "NHWC" and conv2d_eligible(layer.weight_shape, int(call.attrs.groups), lanes)
        return dense_eligible(layer.weight_shape, lanes)

    @staticmethod
    def _packed_call(layer, call, x, quantized, kernels, spec: PackedInt8, zero: int | None = None):
        x_shape = static_shape(call.args[0])
        name = f"{layer.name}_{PACKED_SUFFIX}"
        if layer.op == "conv2d":
            a = call.attrs
            weight = pack_conv2d_weight(quantized, spec.lanes)
            padding = [int(p) for p in a.padding]
            kernel = conv2d_nhwc_packed(
                x_shape, weight.shape, [int(v) for v in a.strides], padding, [int(v) for v in a.dilation], spec.activation,
                zero,
            )
        else:
            weight = pack_dense_weight(quantized, spec.lanes)
            kernel = dense_packed(x_shape, weight.shape, spec.activation)
        # te.create_prim_func names every kernel "main"; a kernel left unfused keeps its symbol.
        gv = kernels.add_func(kernel.with_attr("global_symbol", name), name)
        return relax.call_tir(gv, relax.Tuple([x, relax.const(weight)]), relax.TensorType(static_shape(call), "int32"))


ROW_SCALE_FLOOR = 1e-12  # an all-zero row quantizes to zeros instead of dividing by 0


def per_row_scale(x: relax.Expr) -> relax.Expr:
    """max|x_row| / 127 over the last axis, kept as [..., 1]: dynamic per-token int8 scales."""
    peak = relax.op.max(relax.op.abs(x), axis=-1, keepdims=True)
    return relax.op.divide(relax.op.maximum(peak, relax.const(np.float32(ROW_SCALE_FLOOR))), relax.const(np.float32(127.0)))


@function_pass(opt_level=0)
class FoldBiasIntoInt32:
    """float(acc) * rescale + bias  ->  float(acc + round(bias / rescale)) * rescale.

    The bias joins the int32 accumulator (into the same constant as the packed kernels'
    zero-point correction, when there is one), so the epilogue is one integer add, a
    conversion and one multiply. The rounding moves the bias by at most half an
    accumulator step (s_x * s_w / 2), far below int8's own rounding noise.
    """

    @carries_errors
    def transform_function(self, func: relax.Function, mod: IRModule, ctx: PassContext) -> relax.Function:
        if is_primitive(func):
            return func
        acc = wildcard()
        rescale, bias = is_const(), is_const()
        pattern = is_op("relax.add")(is_op("relax.multiply")(is_op("relax.astype")(acc), rescale), bias)

        def rewrite(expr, matches):
            accumulator = matches[acc]
            if accumulator.ty.dtype != "int32" or expr.ty.dtype != "float32":
                return expr
            r = matches[rescale].value.numpy().astype(np.float64)
            b = matches[bias].value.numpy().astype(np.float64)
            out_shape = static_shape(expr)
            try:
                if out_shape is None or np.broadcast_shapes(r.shape, b.shape, out_shape) != tuple(out_shape):
                    return expr
            except ValueError:
                return expr
            steps = np.round(b / np.where(r == 0, 1.0, r))
            if np.any(r == 0) or np.abs(steps).max(initial=0) >= 2**30:
                return expr
            steps = steps.astype(np.int32)
            base = accumulator
            if isinstance(base, relax.Call) and base.op.name == "relax.add" and isinstance(base.args[1], GenericConst):
                steps = base.args[1].value.numpy().astype(np.int32) + steps  # merge with the correction
                base = base.args[0]
            summed = relax.op.add(base, relax.const(steps.astype(np.int32)))
            return relax.op.multiply(relax.op.astype(summed, "float32"), matches[rescale])

        return rewrite_call(pattern, rewrite, func)
