"""TFLite -> Relax: float and full-integer int8 .tflite files (what Keras/TensorFlow models
become on devices).

The file is parsed and walked before conversion (a corrupt or truncated flatbuffer is
reported as such, not as a crash inside the importer), every operator is checked against
TVM's TFLite importer (all unsupported ones listed at once, with their position and
output tensor), dynamic dimensions (-1 in the shape signature) must be given by
`input_shapes`. TFLite's layout (NHWC activations, HWIO / 1HWO weights) is kept as it
comes: the float path computes in NHWC, and an int8 model's quantize/dequantize pairs
are turned into int8 compute by the QDQ quantizer (packed int8 kernels), which also
works in NHWC.

The `tflite` package is optional (the `tflite` extra) and imported only here.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ...errors import ModelImportError, summarize_exception
from ...runtime.manifest import TensorSpec
from .model import ImportedModel, checked_override

FRONTEND = "tvm.relax.frontend.tflite.from_tflite"
INSTALL_HINT = "pip install 'tvmdeploy[tflite]'"

# TFLite TensorType enum -> numpy dtype name (the types a model input can have).
_TENSOR_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 7: "int16", 9: "int8", 10: "float64"}


def require_tflite(what: str):
    try:
        import tflite
    except ImportError:
        raise ModelImportError(f"{what}: the tflite package is not installed; install tvmdeploy's tflite extra: {INSTALL_HINT}") from None
    return tflite


def import_tflite(path: str | os.PathLike, input_shapes: dict[str, tuple[int, ...]] | None = None) -> ImportedModel:
    path = Path(path)
    tflite = require_tflite(str(path))
    model, data = _read_model(tflite, path)
    converter = _check_supported_ops(model, path)
    inputs = _static_inputs(model, path, input_shapes or {})
    mod = _to_relax(model, path, inputs)
    passes = ["tflite-nhwc-kept", "tflite-conv-weights-to-OHWI"] if _has_conv2d(mod) else ["tflite-nhwc-kept"]
    if _is_quantized(model, converter):
        passes.append("tflite-int8-as-qdq")
    from importlib.metadata import PackageNotFoundError, version

    try:
        versions = {"tflite": version("tflite")}
    except PackageNotFoundError:  # pragma: no cover - a source checkout of tflite
        versions = {}
    return ImportedModel(
        name="".join(c if c.isalnum() or c in "-_." else "_" for c in path.stem) or "model",
        source=path.resolve(),
        source_sha256=hashlib.sha256(data).hexdigest(),
        mod=mod,
        inputs=inputs,
        outputs=_output_specs(model, mod),
        import_passes=passes,
        source_format="tflite",
        frontend=FRONTEND,
        versions=versions,
    )


def _read_model(tflite, path: Path):
    if not path.exists():
        raise ModelImportError(f"{path}: no such file")
    if path.is_dir():
        raise ModelImportError(f"{path}: is a folder, expected a .tflite model file")
    data = path.read_bytes()
    if not data:
        raise ModelImportError(f"{path}: the file is empty, expected a TFLite model")
    hint = "convert one with tf.lite.TFLiteConverter (see the README's Keras/TensorFlow section)"
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelImportError(f"{path}: not a TFLite model (no TFL3 flatbuffer identifier); {hint}")
    try:
        model = tflite.Model.GetRootAsModel(data, 0)
        _walk(model, len(data))
    except Exception as e:
        raise ModelImportError(
            f"{path}: a corrupt or truncated TFLite file ({summarize_exception(e, 120)}); {hint}"
        ) from None
    return model, data


def _walk(model, size: int) -> None:
    """Touch every table the importer reads, so a damaged flatbuffer fails here, clearly."""
    if model.SubgraphsLength() < 1:
        raise ValueError("the model has no subgraph")
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        code.BuiltinCode(), code.DeprecatedBuiltinCode(), code.CustomCode()
    for b in range(model.BuffersLength()):
        buffer = model.Buffers(b)
        if buffer.Offset() > 0:  # a buffer stored after the flatbuffer (models > 2 GB)
            if buffer.Offset() + buffer.Size() > size:
                raise ValueError(f"buffer {b} lies beyond the end of the file")
        elif buffer.DataLength() > 0:
            buffer.DataAsNumpy()
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        tensors = subgraph.TensorsLength()
        for t in range(tensors):
            tensor = subgraph.Tensors(t)
            tensor.ShapeAsNumpy(), tensor.Type(), tensor.Name()
            if tensor.Buffer() >= max(model.BuffersLength(), 1):
                raise ValueError(f"tensor {t} refers to buffer {tensor.Buffer()} of {model.BuffersLength()}")
        for o in range(subgraph.OperatorsLength()):
            op = subgraph.Operators(o)
            if op.OpcodeIndex() >= model.OperatorCodesLength():
                raise ValueError(f"operator {o} has opcode index {op.OpcodeIndex()} of {model.OperatorCodesLength()}")
            for t in (*op.InputsAsNumpy().tolist(), *op.OutputsAsNumpy().tolist()):
                if t >= tensors:
                    raise ValueError(f"operator {o} refers to tensor {t} of {tensors}")
        for t in (*subgraph.InputsAsNumpy().tolist(), *subgraph.OutputsAsNumpy().tolist()):
            if not 0 <= t < tensors:
                raise ValueError(f"subgraph {s} input/output {t} of {tensors} tensors")


def _op_name(model, op) -> str:
    from tflite.BuiltinOperator import BuiltinOperator

    code = model.OperatorCodes(op.OpcodeIndex())
    number = max(code.DeprecatedBuiltinCode(), code.BuiltinCode())
    names = {v: k for k, v in vars(BuiltinOperator).items() if k.isupper()}
    if number == BuiltinOperator.CUSTOM:
        custom = code.CustomCode()
        return "CUSTOM:" + (custom.decode(errors="replace") if custom else "?")
    return names.get(number, f"builtin #{number}")


def _check_supported_ops(model, path: Path):
    from .._tvm import tflite_operator_converter, tflite_tensor_name

    converter = tflite_operator_converter(model)
    subgraph = model.Subgraphs(0)
    missing = []
    for i in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(i)
        name = _op_name(model, op)
        supported = name == "CUSTOM:TFLite_Detection_PostProcess" or name in converter.convert_map
        if not supported:
            outputs = op.OutputsAsNumpy().tolist()
            where = f"operator #{i}" + (f", output '{tflite_tensor_name(subgraph, outputs[0])}'" if outputs else "")
            flex = " (a TensorFlow op kept by SELECT_TF_OPS)" if name.startswith("CUSTOM:Flex") else ""
            missing.append((name, f"{name} ({where}){flex}"))
    if missing:
        kinds = sorted({k for k, _ in missing})
        raise ModelImportError(
            f"{path}: {len(missing)} operator(s) TVM's TFLite importer does not support ({', '.join(kinds)}): "
            f"{', '.join(text for _, text in missing)}. Convert without them (TFLITE_BUILTINS only, "
            f"or an equivalent op in the model), or export to ONNX with tf2onnx"
        )
    try:
        converter.check_unsupported_ops()  # quantized ops without a QDQ lowering, dynamic-range models
    except Exception as e:
        text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise ModelImportError(f"{path}: {text}") from None
    return converter


def _is_quantized(model, converter) -> bool:
    subgraph = model.Subgraphs(0)
    for i in range(subgraph.TensorsLength()):
        q = subgraph.Tensors(i).Quantization()
        if q is not None and q.ScaleLength() > 0:
            return True
    return False


def _static_inputs(model, path: Path, overrides: dict[str, tuple[int, ...]]) -> list[TensorSpec]:
    from .._tvm import tflite_tensor_name

    subgraph = model.Subgraphs(0)
    indices = subgraph.InputsAsNumpy().tolist()
    names = [tflite_tensor_name(subgraph, i) for i in indices]
    for name in overrides:
        if name not in names:
            raise ModelImportError(
                f"{path}: --input-shape names '{name}', which is not an input of the model (inputs: {', '.join(names)})"
            )
    specs, problems = [], []
    for index, name in zip(indices, names):
        tensor = subgraph.Tensors(index)
        dtype = _TENSOR_TYPES.get(tensor.Type())
        if dtype is None:
            raise ModelImportError(f"{path}: input '{name}' has TFLite tensor type {tensor.Type()}, which tvmdeploy cannot feed")
        shape = [int(d) for d in tensor.ShapeAsNumpy().tolist()] if tensor.ShapeLength() else []
        signature = [int(d) for d in tensor.ShapeSignatureAsNumpy().tolist()] if tensor.ShapeSignatureLength() else shape
        declared = [d if d >= 0 else "?" for d in signature]
        shown = f"[{', '.join(map(str, declared))}]"
        if name in overrides:
            given = checked_override(path, name, overrides[name], declared)
            specs.append(TensorSpec(name, given, dtype))
        elif any(not isinstance(d, int) for d in declared):
            example = ",".join(str(d) if isinstance(d, int) else "1" for d in declared)
            problems.append(f"'{name}' has dynamic dimension(s) in {shown}: pass --input-shape {name}={example}")
        else:
            specs.append(TensorSpec(name, tuple(declared), dtype))
    if problems:
        raise ModelImportError(f"{path}: input shapes must be static: " + "; ".join(problems))
    return specs


def _to_relax(model, path: Path, inputs: list[TensorSpec]):
    from tvm import relax
    from tvm.relax.frontend.tflite import from_tflite

    try:
        mod = from_tflite(
            model, shape_dict={s.name: tuple(s.shape) for s in inputs}, dtype_dict={s.name: s.dtype for s in inputs}
        )
    except Exception as e:
        raise ModelImportError(f"{path}: TVM's TFLite importer failed: {summarize_exception(e)}") from None
    func = mod["main"]
    # The importer binds the weights as constants and also lists them in a "params"
    # attribute (for callers that want them as inputs): a second copy nobody reads here.
    for key in ("params", "num_input"):
        if func.attrs is not None and key in func.attrs:
            func = func.without_attr(key)
    mod["main"] = func
    mod = relax.transform.Normalize()(mod)
    if _has_conv2d(mod):
        # TFLite's weights are HWIO (1HWO depthwise); tvmdeploy's layer analysis (BatchNorm
        # folding, pruning, int8, the packed int8 kernels) reads conv2d as NHWC/OHWI. The
        # activations are NHWC already, so only the constant weights are transposed, once,
        # at compile time: no transpose runs in the model.
        mod = relax.transform.FoldConstant()(relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]})(mod))
    if len(mod["main"].params) != len(inputs):
        raise ModelImportError(
            f"{path}: the imported graph takes {len(mod['main'].params)} inputs, the model declares {len(inputs)}; "
            f"this model needs a fix in the importer"
        )
    return mod


def _has_conv2d(mod) -> bool:
    import tvm
    from tvm import relax

    from ..analysis.channels import bindings_of

    return any(
        isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op) and b.value.op.name == "relax.nn.conv2d"
        for b in bindings_of(mod["main"])
    )


def _output_specs(model, mod) -> list[TensorSpec]:
    from tvm import relax

    from .._tvm import tflite_tensor_name

    ret = mod["main"].ret_ty
    infos = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    subgraph = model.Subgraphs(0)
    names = [tflite_tensor_name(subgraph, i) for i in subgraph.OutputsAsNumpy().tolist()]
    if len(names) != len(infos):
        names = [f"output_{i}" for i in range(len(infos))]
    specs = []
    for name, info in zip(names, infos):
        dims = info.shape.values if getattr(info, "shape", None) is not None else []
        specs.append(TensorSpec(name, tuple(int(d.value) if hasattr(d, "value") else -1 for d in dims), str(info.dtype)))
    return specs


__all__ = ["import_tflite", "require_tflite"]
