"""Pre-quantized (QDQ) ONNX models onto the real int8 path.

ONNX Runtime's `quantize_static` (QDQ format) writes DequantizeLinear in front of every
quantized conv/matmul input, and DequantizeLinear on int8 weights. TVM imports that as
float compute between quantize/dequantize pairs ("simulated" int8), and constant folding
turns the weight dequantize into float weights. Here every conv/matmul whose input comes
from a per-tensor dequantize gets int8 x int8 -> int32 compute instead, with the input
scale taken from the model (no calibration): symmetric int8 covering the range the
model's own (scale, zero point) allows. The weights are re-quantized per output
channel, which recovers ORT's symmetric per-channel int8 weights exactly.
"""

from __future__ import annotations

import tvm
from tvm import relax

from ..analysis.channels import analyze_channels, bindings_of


def qdq_input_scales(mod) -> dict[str, float]:
    """{layer name: symmetric int8 input scale} for layers fed by a per-tensor dequantize."""
    scales = {}
    for name, (s, z, dtype) in qdq_input_params(mod).items():
        low, high = (-128, 127) if dtype == "int8" else (0, 255)
        peak = max(abs(s * (low - z)), abs(s * (high - z)))
        scales[name] = peak / 127.0 if peak > 0 else 1.0
    return scales


def qdq_input_params(mod) -> dict[str, tuple[float, int, str]]:
    """{layer name: (scale, zero point, int8/uint8)} of the per-tensor dequantize feeding it:
    the model's own (asymmetric) activation quantization, which the packed int8 kernels
    can reproduce exactly (TFLite int8 and ONNX Runtime uint8 activations)."""
    func = mod["main"] if isinstance(mod, tvm.ir.IRModule) else mod
    graph = analyze_channels(func)
    producer = {b.var: b.value for b in bindings_of(func) if isinstance(b, relax.VarBinding)}
    scales = {}
    for layer in graph.layers:
        source = producer.get(graph.bindings[layer.slot[0]].value.args[0])
        if not (isinstance(source, relax.Call) and isinstance(source.op, tvm.ir.Op) and source.op.name == "relax.dequantize"):
            continue
        scale, zero = source.args[1], source.args[2]
        if not (isinstance(scale, tvm.ir.GenericConst) and isinstance(zero, tvm.ir.GenericConst)):
            continue
        s, z = scale.value.numpy(), zero.value.numpy()
        if s.size != 1 or z.size != 1:
            continue  # per-channel activations: leave as float
        dtype = str(source.args[0].ty.dtype)
        if dtype not in ("int8", "uint8"):
            continue
        scales[layer.name] = (float(s.reshape(-1)[0]), int(z.reshape(-1)[0]), dtype)
    return scales


__all__ = ["qdq_input_scales", "qdq_input_params"]
